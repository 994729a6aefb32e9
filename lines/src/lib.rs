//! tcp-echo's hot loop, in a crate of its own so that it is optimised for speed while the rest
//! of the static binary is built for size: runs of short lines copied with their prefix into
//! a staging buffer ([`stage_short_lines`]), and the newlines of a 64-byte block as a bitmask
//! ([`newline_mask`]). Pure functions over byte slices; tcp-echo's `echo` module frames the
//! rest of a read around them.

/// The longest prefix (with its space) that [`stage_short_lines`] copies as one fixed-size move.
pub const PREFIX_PAD: usize = 16;

/// The longest line [`stage_short_lines`] copies as one fixed-size move.
pub const SHORT_LINE: usize = 64;

/// Room the staging buffer keeps beyond the bytes staged, for the fixed-size moves of
/// [`stage_short_lines`] (which write up to this much past the end of what they stage).
/// How far ahead of the line being copied the loop asks for the input it will read and the
/// staging buffer it will write (prefetch): the processor's own prefetchers do not run far
/// enough ahead of the two streams (`make bench`: 64-byte lines, 16 connections, 1.08x MB/s
/// and 0.91x server CPU per line with it; 512 to 4096 bytes measured alike).
const PREFETCH_AHEAD: usize = 1024;

pub const STAGE_SLACK: usize = PREFIX_PAD + SHORT_LINE;

/// Stages whole lines of at most [`SHORT_LINE`] bytes, each after `prefix` (at most
/// [`PREFIX_PAD`] bytes), from `input[from..]` into `stage`, while the staged bytes stay within
/// `stage_cap` and the capacity of `stage` keeps [`STAGE_SLACK`] to spare. Returns where it
/// stopped (the start of a line) and how many lines it staged.
///
/// The common case of a prefixed stream (64-byte lines) made cheap: each line is two
/// fixed-size moves (the prefix as [`PREFIX_PAD`] bytes, the line as [`SHORT_LINE`] bytes,
/// each overwritten past its end by what follows) and no bookkeeping but two offsets. Kept
/// out of line and free of calls but the newline search's, so that it adds nothing to the
/// deepest stack of a connection (an idle connection's memory is the pages its stack touched).
/// Where the processor has AVX2 (checked once), the moves and the compares take 32 bytes at a
/// time.
#[inline(never)]
pub fn stage_short_lines(
    prefix: &[u8],
    input: &[u8],
    from: usize,
    stage: &mut Vec<u8>,
    stage_cap: usize,
) -> (usize, u64) {
    // Too near the end for a line to be moved whole: the caller takes it. (Nothing deeper
    // runs, so a connection that echoed one short line has touched no more stack than before.)
    if from + SHORT_LINE > input.len() {
        return (from, 0);
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2.
        return unsafe { stage_short_lines_avx2(prefix, input, from, stage, stage_cap) };
    }
    stage_short_lines_sse2(prefix, input, from, stage, stage_cap)
}

/// [`stage_short_lines`] without AVX2 (a function of its own, so that the dispatch adds no
/// frame to the stack).
#[inline(never)]
fn stage_short_lines_sse2(
    prefix: &[u8],
    input: &[u8],
    from: usize,
    stage: &mut Vec<u8>,
    stage_cap: usize,
) -> (usize, u64) {
    // SAFETY: without AVX2's instructions.
    unsafe { stage_lines::<false>(prefix, input, from, stage, stage_cap) }
}

/// [`stage_short_lines`] compiled for AVX2.
///
/// # Safety
/// The processor has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn stage_short_lines_avx2(
    prefix: &[u8],
    input: &[u8],
    from: usize,
    stage: &mut Vec<u8>,
    stage_cap: usize,
) -> (usize, u64) {
    // SAFETY: the processor has AVX2 (the caller's promise).
    unsafe { stage_lines::<true>(prefix, input, from, stage, stage_cap) }
}

/// The body of [`stage_short_lines`], with AVX2's compares where `AVX2` (inlined into a function
/// compiled for AVX2, whose moves then take 32 bytes at a time too).
///
/// # Safety
/// With `AVX2`, the processor has AVX2.
#[inline(always)]
unsafe fn stage_lines<const AVX2: bool>(
    prefix: &[u8],
    input: &[u8],
    mut from: usize,
    stage: &mut Vec<u8>,
    stage_cap: usize,
) -> (usize, u64) {
    let (start, plen) = (from, prefix.len());
    let mut padded = [0u8; PREFIX_PAD];
    padded[..plen].copy_from_slice(prefix);
    let staged = stage.len();
    // Bytes that may still be staged, and where the next line's prefix goes.
    let mut room = stage_cap
        .min(stage.capacity().saturating_sub(STAGE_SLACK))
        .saturating_sub(staged);
    // SAFETY: `staged` is within the allocation of `stage` (its length).
    let mut out = unsafe { stage.as_mut_ptr().add(staged) };
    // The newlines are taken block by block, each block's from its bitmask: where the next
    // block is read does not depend on where the last line ended, so the processor reads
    // ahead while lines are copied (a search from each line's end waited for each read).
    let mut block = from & !63;
    // SAFETY: with `AVX2`, the processor has it (this function's promise), here and below.
    let mut mask = unsafe { newline_mask::<AVX2>(input, block) } & (u64::MAX << (from - block));
    while from + SHORT_LINE <= input.len() {
        while mask == 0 {
            block += 64;
            // No newline in reach of a short line: let the caller take it. (A block before
            // `from + SHORT_LINE` is within the input.)
            if block >= from + SHORT_LINE {
                break;
            }
            mask = unsafe { newline_mask::<AVX2>(input, block) };
        }
        let newline = block + mask.trailing_zeros() as usize;
        let n = newline + 1 - from;
        if mask == 0 || n > SHORT_LINE || plen + n > room {
            break;
        }
        mask &= mask - 1;
        // SAFETY: `plen + n <= room`, and `room` keeps `STAGE_SLACK` of the capacity of `stage`
        // after it, so the moves' destinations, `out..out + PREFIX_PAD` and
        // `out + plen..out + plen + SHORT_LINE`, are within that capacity; the line's move reads
        // `input[from..from + SHORT_LINE]`, which exists (the loop's condition). The bytes past
        // the line are overwritten by the next line's or left beyond the length set below.
        prefetch(
            input.as_ptr().wrapping_add(from + PREFETCH_AHEAD),
            out.wrapping_add(PREFETCH_AHEAD),
        );
        unsafe {
            std::ptr::copy_nonoverlapping(padded.as_ptr(), out, PREFIX_PAD);
            std::ptr::copy_nonoverlapping(input.as_ptr().add(from), out.add(plen), SHORT_LINE);
            out = out.add(plen + n);
        }
        room -= plen + n;
        from = newline + 1;
    }
    // SAFETY: `out` is where the last line staged ended, within the capacity of `stage`, and
    // every byte before it is initialised.
    let len = unsafe { out.offset_from(stage.as_ptr()) } as usize;
    unsafe { stage.set_len(len) };
    // Each line staged added the prefix to its bytes.
    let lines = (len - staged - (from - start)) / plen;
    (from, lines as u64)
}

/// Asks for the cache lines at `read` and `write` to be brought near (a prefetch of each). A
/// hint: it never faults, wherever the addresses point (past the end of a buffer, say).
#[inline(always)]
fn prefetch(read: *const u8, write: *mut u8) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads and writes nothing, and no address makes it fault.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(read.cast());
            _mm_prefetch::<_MM_HINT_T0>(write.cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (read, write);
}

/// Bit `i` set where `input[start + i]` is a newline, for the (up to) 64 bytes from `start`,
/// with the compares every x86_64 processor has (SSE2).
#[inline]
pub fn newline_mask_sse2(input: &[u8], start: usize) -> u64 {
    // SAFETY: without AVX2's instructions.
    unsafe { newline_mask::<false>(input, start) }
}

/// Bit `i` set where `input[start + i]` is a newline, for the (up to) 64 bytes from `start`.
/// On x86_64 a whole block is compared at once: with `AVX2` as two 32-byte compares, else as
/// four of 16 bytes (SSE2 is part of every x86_64 CPU); elsewhere byte by byte (which the
/// compiler may vectorise).
///
/// # Safety
/// With `AVX2`, the processor has AVX2.
#[inline(always)]
unsafe fn newline_mask<const AVX2: bool>(input: &[u8], start: usize) -> u64 {
    let block = input.get(start..).unwrap_or_default();
    if block.len() < 64 {
        return short_newline_mask(block);
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
            _mm256_set1_epi8, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let p = block.as_ptr();
        if AVX2 {
            // SAFETY: the processor has AVX2 (the caller's promise); the two unaligned 32-byte
            // loads read `block[..64]`, which exists. (No closure: at opt-level z it stays a
            // call.)
            return unsafe {
                let newline = _mm256_set1_epi8(b'\n' as i8);
                let low = _mm256_cmpeq_epi8(_mm256_loadu_si256(p.cast::<__m256i>()), newline);
                let high =
                    _mm256_cmpeq_epi8(_mm256_loadu_si256(p.add(32).cast::<__m256i>()), newline);
                u64::from(_mm256_movemask_epi8(low) as u32)
                    | u64::from(_mm256_movemask_epi8(high) as u32) << 32
            };
        }
        // SAFETY: SSE2 is in every x86_64 CPU; the four unaligned 16-byte loads read
        // `block[..64]`, which exists.
        unsafe {
            let newline = _mm_set1_epi8(b'\n' as i8);
            let at = |i: usize| {
                let bytes = _mm_loadu_si128(p.add(i).cast::<__m128i>());
                u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, newline)) as u16)
            };
            at(0) | at(16) << 16 | at(32) << 32 | at(48) << 48
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    short_newline_mask(&block[..64])
}

/// [`newline_mask`] of a block of at most 64 bytes (on x86_64, of the last block, shorter).
#[inline(never)]
fn short_newline_mask(block: &[u8]) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (i, &b)| m | (u64::from(b == b'\n') << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line of `input` (the last one may be open) after `prefix`.
    fn prefixed(input: &[u8], prefix: &[u8]) -> Vec<u8> {
        input
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|line| [prefix, line].concat())
            .collect()
    }

    #[test]
    fn short_lines_are_staged_alike_with_and_without_avx2() {
        // Lines of varied lengths, some longer than SHORT_LINE (where the loop stops).
        let input: Vec<u8> = (0..3000u32)
            .map(|i| {
                if (i * 7919) % 37 < 2 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        for prefix in [&b"p "[..], b"one ", b"fifteen-bytes! "] {
            for from in [0, 1, 63, 64, 65, 200] {
                for cap in [600, 1000, 8000] {
                    let run = |avx2: bool| {
                        let mut stage = Vec::with_capacity(cap + STAGE_SLACK);
                        // SAFETY: AVX2 only where the processor has it.
                        let r = unsafe {
                            if avx2 {
                                stage_lines::<true>(prefix, &input, from, &mut stage, cap)
                            } else {
                                stage_lines::<false>(prefix, &input, from, &mut stage, cap)
                            }
                        };
                        (r, stage)
                    };
                    let (plain, staged) = run(false);
                    let (to, lines) = plain;
                    assert!(
                        to > from,
                        "prefix {prefix:?} from {from} cap {cap}: no line"
                    );
                    assert_eq!(input[to - 1], b'\n', "stops at a line's start");
                    let want = prefixed(&input[from..to], prefix);
                    assert_eq!(staged, want, "prefix {prefix:?} from {from} cap {cap}");
                    assert!(staged.len() <= cap, "within the cap");
                    let newlines = input[from..to].iter().filter(|&&b| b == b'\n').count();
                    assert_eq!(lines, newlines as u64);
                    #[cfg(target_arch = "x86_64")]
                    if std::is_x86_feature_detected!("avx2") {
                        assert_eq!(run(true), (plain, staged));
                    }
                    // The public entry point (whichever build the processor takes) agrees.
                    let mut stage = Vec::with_capacity(cap + STAGE_SLACK);
                    assert_eq!(
                        stage_short_lines(prefix, &input, from, &mut stage, cap),
                        plain
                    );
                }
            }
        }
    }

    #[test]
    fn the_masks_mark_every_newline() {
        let input: Vec<u8> = (0..3000u32)
            .map(|i| if (i * 7919) % 37 < 2 { b'\n' } else { b'x' })
            .collect();
        for start in 0..input.len() {
            let end = (start + 64).min(input.len());
            let want = input[start..end]
                .iter()
                .enumerate()
                .fold(0u64, |m, (i, &b)| m | (u64::from(b == b'\n') << i));
            assert_eq!(newline_mask_sse2(&input, start), want, "block at {start}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the processor has AVX2.
                assert_eq!(unsafe { newline_mask::<true>(&input, start) }, want);
            }
        }
    }

    #[test]
    fn a_long_line_or_a_full_stage_stops_the_loop_at_a_line_start() {
        let mut input = b"short\n".repeat(20);
        input.extend_from_slice(&[b'l'; 100]);
        input.extend_from_slice(b"\nshort\n");
        input.extend_from_slice(&[b'x'; 70]);
        let mut stage = Vec::with_capacity(4096 + STAGE_SLACK);
        let (to, lines) = stage_short_lines(b"one ", &input, 0, &mut stage, 4096);
        assert_eq!((to, lines), (120, 20), "stops before the 101-byte line");
        assert_eq!(stage, b"one short\n".repeat(20));
        let mut stage = Vec::with_capacity(4096 + STAGE_SLACK);
        assert_eq!(
            stage_short_lines(b"one ", &input, 0, &mut stage, 35),
            (18, 3)
        );
        assert_eq!(stage, b"one short\n".repeat(3));
    }
}
