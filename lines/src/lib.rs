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
pub const STAGE_SLACK: usize = PREFIX_PAD + SHORT_LINE;

/// How far ahead of the line being copied the loop asks for the input it will read and the
/// staging buffer it will write (prefetch): the processor's own prefetchers do not run far
/// enough ahead of the two streams (`make bench`: 64-byte lines, 16 connections, 1.08x MB/s
/// and 0.91x server CPU per line with it; 512 to 4096 bytes measured alike).
const PREFETCH_AHEAD: usize = 1024;

/// Stages whole lines of at most [`SHORT_LINE`] bytes, each after `prefix` (at most
/// [`PREFIX_PAD`] bytes), from `input[from..]` into `stage`, while the staged bytes stay within
/// `stage_cap` and the capacity of `stage` keeps [`STAGE_SLACK`] to spare. Returns where it
/// stopped (the start of a line) and how many lines it staged. It stops only where it must: at
/// a line longer than [`SHORT_LINE`], at one that would pass `stage_cap`, or where fewer than
/// [`SHORT_LINE`] bytes are left.
///
/// The common case of a prefixed stream (64-byte lines) made cheap: each line is two
/// fixed-size moves (the prefix as [`PREFIX_PAD`] bytes, the line as [`SHORT_LINE`] bytes,
/// each overwritten past its end by what follows) and no bookkeeping but two offsets. Kept
/// out of line and free of calls but the newline search's, so that it adds nothing to the
/// deepest stack of a connection (an idle connection's memory is the pages its stack touched).
/// Where the processor has AVX-512 (BW) or AVX2 (checked once), the moves and the compares
/// take 64 or 32 bytes at a time.
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
    {
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the processor has AVX-512 BW (and so AVX-512 F).
            return unsafe { stage_short_lines_avx512(prefix, input, from, stage, stage_cap) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the processor has AVX2.
            return unsafe { stage_short_lines_avx2(prefix, input, from, stage, stage_cap) };
        }
    }
    stage_short_lines_sse2(prefix, input, from, stage, stage_cap)
}

/// The instructions a build of the loop uses: SSE2 (every x86_64 processor; elsewhere, plain
/// code), AVX2, or AVX-512 BW.
const SSE2: u8 = 0;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AVX2: u8 = 1;
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const AVX512: u8 = 2;

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
    // SAFETY: without AVX2's or AVX-512's instructions.
    unsafe { stage_lines::<SSE2>(prefix, input, from, stage, stage_cap) }
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
    unsafe { stage_lines::<AVX2>(prefix, input, from, stage, stage_cap) }
}

/// [`stage_short_lines`] compiled for AVX-512 (BW).
///
/// # Safety
/// The processor has AVX-512 F and BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn stage_short_lines_avx512(
    prefix: &[u8],
    input: &[u8],
    from: usize,
    stage: &mut Vec<u8>,
    stage_cap: usize,
) -> (usize, u64) {
    // SAFETY: the processor has AVX-512 F and BW (the caller's promise).
    unsafe { stage_lines::<AVX512>(prefix, input, from, stage, stage_cap) }
}

/// The body of [`stage_short_lines`], with the instructions of `SIMD` (inlined into a function
/// compiled for them).
///
/// Two loops: a fast one over whole 64-byte blocks, while the input holds another block after
/// the current one (so that every line's 64-byte move reads within the input) and the stage has
/// room for the most one block's lines can add (so that no line checks it); then one that
/// checks each line, for the end of the input and of the stage.
///
/// # Safety
/// The processor has the instructions of `SIMD`.
#[inline(always)]
unsafe fn stage_lines<const SIMD: u8>(
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
    // Bytes that may be staged.
    let room = stage_cap
        .min(stage.capacity().saturating_sub(STAGE_SLACK))
        .saturating_sub(staged);
    // SAFETY: `staged + room` is within the allocation of `stage` (at most its capacity).
    let (mut out, end) = unsafe {
        let out = stage.as_mut_ptr().add(staged);
        (out, out.add(room))
    };
    // SAFETY (of the moves below): a line is moved only while it ends (with its prefix) by
    // `end`, which keeps `STAGE_SLACK` of the capacity of `stage` after it, so the moves'
    // destinations, `out..out + PREFIX_PAD` and `out + plen..out + plen + SHORT_LINE`, are
    // within that capacity; a line's move reads `input[from..from + SHORT_LINE]`, which exists
    // (each loop's condition). The bytes past a line are overwritten by the next line's or left
    // beyond the length set below.
    let src = input.as_ptr();
    // The newlines are taken block by block, each block's from its bitmask: where the next
    // block is read does not depend on where the last line ended, so the processor reads
    // ahead while lines are copied (a search from each line's end waited for each read).
    let mut block = from & !63;
    // SAFETY: the processor has the instructions of `SIMD` (this function's promise), here and
    // below.
    let mut mask = unsafe { newline_mask::<SIMD>(input, block) } & (u64::MAX << (from - block));

    // The lines ending in one block add at most 127 bytes of input (one began in the block
    // before) and 64 prefixes.
    let block_most = 2 * SHORT_LINE + 64 * plen;
    // SAFETY: `out` never passes `end` (the lines of a block add at most `block_most`).
    'blocks: while block + 2 * 64 <= input.len()
        && unsafe { end.offset_from(out) } as usize >= block_most
    {
        prefetch(
            src.wrapping_add(block + PREFETCH_AHEAD),
            out.wrapping_add(PREFETCH_AHEAD),
        );
        while mask != 0 {
            let newline = block + mask.trailing_zeros() as usize;
            let n = newline + 1 - from;
            if n > SHORT_LINE {
                break 'blocks;
            }
            mask &= mask - 1;
            // SAFETY: `from <= newline < block + 64`, so the move reads within the input.
            unsafe {
                move_line::<SIMD>(&padded, src.add(from), out, plen);
                out = out.add(plen + n);
            }
            from = newline + 1;
        }
        // A line that began at the block's start or before has no newline in it: it is long.
        if from <= block {
            break;
        }
        block += 64;
        // SAFETY: `block + 64 <= input.len()` (the condition of the loop, for the block before).
        mask = unsafe { block_mask::<SIMD>(src.add(block)) };
    }

    while from + SHORT_LINE <= input.len() {
        while mask == 0 {
            block += 64;
            // No newline in reach of a short line: let the caller take it. (A block before
            // `from + SHORT_LINE` is within the input.)
            if block >= from + SHORT_LINE {
                break;
            }
            mask = unsafe { newline_mask::<SIMD>(input, block) };
        }
        let newline = block + mask.trailing_zeros() as usize;
        let n = newline + 1 - from;
        // SAFETY: `out` is at or before `end`.
        if mask == 0 || n > SHORT_LINE || plen + n > unsafe { end.offset_from(out) } as usize {
            break;
        }
        mask &= mask - 1;
        // SAFETY: `from + SHORT_LINE <= input.len()` (the loop's condition).
        unsafe {
            move_line::<SIMD>(&padded, src.add(from), out, plen);
            out = out.add(plen + n);
        }
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

/// Moves a line to `out`: `padded` (the prefix, `plen` bytes of it), then the [`SHORT_LINE`]
/// bytes at `line` after the prefix, as two fixed-size moves.
///
/// # Safety
/// `line..line + SHORT_LINE` is readable, `out..out + plen + SHORT_LINE` and
/// `out..out + PREFIX_PAD` writable, and the processor has the instructions of `SIMD`.
#[inline(always)]
unsafe fn move_line<const SIMD: u8>(
    padded: &[u8; PREFIX_PAD],
    line: *const u8,
    out: *mut u8,
    plen: usize,
) {
    // SAFETY: the caller's promises.
    unsafe {
        std::ptr::copy_nonoverlapping(padded.as_ptr(), out, PREFIX_PAD);
        #[cfg(target_arch = "x86_64")]
        if SIMD == AVX512 {
            use std::arch::x86_64::{_mm512_loadu_si512, _mm512_storeu_si512};
            _mm512_storeu_si512(out.add(plen).cast(), _mm512_loadu_si512(line.cast()));
            return;
        }
        std::ptr::copy_nonoverlapping(line, out.add(plen), SHORT_LINE);
    }
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

/// Whether `bytes` holds a newline, for the few dozen bytes of one short line: 16 bytes
/// compared at a time with no early exit (on x86_64; elsewhere a plain search), cheaper than a
/// search call's set-up at this size (a 64-byte round trip: 31 user-space instructions here
/// against 80 through `memchr` at opt-level z, callgrind). Kept out of line, so that it is
/// compiled at this crate's opt-level wherever it is called from.
#[inline(never)]
pub fn has_newline(bytes: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 16 {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
            _mm_setzero_si128,
        };
        let p = bytes.as_ptr();
        // SAFETY: SSE2 is part of every x86_64 processor; each load reads 16 bytes that
        // `bytes` holds: from `i` while `i + 16 <= len`, and the last 16 (`len >= 16`).
        unsafe {
            let newline = _mm_set1_epi8(b'\n' as i8);
            let mut found = _mm_setzero_si128();
            let mut i = 0;
            while i + 16 <= bytes.len() {
                let block = _mm_loadu_si128(p.add(i).cast());
                found = _mm_or_si128(found, _mm_cmpeq_epi8(block, newline));
                i += 16;
            }
            let last = _mm_loadu_si128(p.add(bytes.len() - 16).cast());
            found = _mm_or_si128(found, _mm_cmpeq_epi8(last, newline));
            return _mm_movemask_epi8(found) != 0;
        }
    }
    bytes.contains(&b'\n')
}

/// Bit `i` set where `input[start + i]` is a newline, for the (up to) 64 bytes from `start`,
/// with the compares every x86_64 processor has (SSE2).
#[inline]
pub fn newline_mask_sse2(input: &[u8], start: usize) -> u64 {
    // SAFETY: without AVX2's or AVX-512's instructions.
    unsafe { newline_mask::<SSE2>(input, start) }
}

/// Bit `i` set where `input[start + i]` is a newline, for the (up to) 64 bytes from `start`.
///
/// # Safety
/// The processor has the instructions of `SIMD`.
#[inline(always)]
unsafe fn newline_mask<const SIMD: u8>(input: &[u8], start: usize) -> u64 {
    let block = input.get(start..).unwrap_or_default();
    if block.len() < 64 {
        return short_newline_mask(block);
    }
    // SAFETY: `block[..64]` exists; the instructions are the caller's promise.
    unsafe { block_mask::<SIMD>(block.as_ptr()) }
}

/// Bit `i` set where `*p.add(i)` is a newline, for the 64 bytes from `p`. On x86_64 a whole
/// block is compared at once: with AVX-512 as one 64-byte compare, with AVX2 as two of 32
/// bytes, else as four of 16 (SSE2 is part of every x86_64 processor); elsewhere byte by byte
/// (which the compiler may vectorise).
///
/// # Safety
/// `p..p + 64` is readable, and the processor has the instructions of `SIMD`.
#[inline(always)]
unsafe fn block_mask<const SIMD: u8>(p: *const u8) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8,
            _mm256_set1_epi8, _mm512_cmpeq_epi8_mask, _mm512_loadu_si512, _mm512_set1_epi8,
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        if SIMD == AVX512 {
            // SAFETY: the processor has AVX-512 BW; the load reads `p..p + 64`.
            return unsafe {
                _mm512_cmpeq_epi8_mask(_mm512_loadu_si512(p.cast()), _mm512_set1_epi8(b'\n' as i8))
            };
        }
        if SIMD == AVX2 {
            // SAFETY: the processor has AVX2; the two unaligned 32-byte loads read `p..p + 64`.
            // (No closure: at opt-level z it stays a call.)
            return unsafe {
                let newline = _mm256_set1_epi8(b'\n' as i8);
                let low = _mm256_cmpeq_epi8(_mm256_loadu_si256(p.cast::<__m256i>()), newline);
                let high =
                    _mm256_cmpeq_epi8(_mm256_loadu_si256(p.add(32).cast::<__m256i>()), newline);
                u64::from(_mm256_movemask_epi8(low) as u32)
                    | u64::from(_mm256_movemask_epi8(high) as u32) << 32
            };
        }
        // SAFETY: SSE2 is in every x86_64 processor; the four unaligned 16-byte loads read
        // `p..p + 64`.
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
    // SAFETY: `p..p + 64` is readable (the caller's promise).
    short_newline_mask(unsafe { std::slice::from_raw_parts(p, 64) })
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

    /// Lines whose lengths (newline included) `next` draws, `len` bytes of them.
    fn lines_of(len: usize, mut next: impl FnMut() -> usize) -> Vec<u8> {
        let mut input = Vec::with_capacity(len + 200);
        let mut i = 0u8;
        while input.len() < len {
            let n = next().max(1);
            input.extend((1..n).map(|_| {
                i = i.wrapping_add(1);
                b'a' + i % 26
            }));
            input.push(b'\n');
        }
        input.truncate(len);
        input
    }

    /// The builds of the loop this processor can run: SSE2, then AVX2 and AVX-512 where it has
    /// them.
    fn builds() -> Vec<u8> {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut builds = vec![SSE2];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                builds.push(AVX2);
            }
            if std::is_x86_feature_detected!("avx512bw") {
                builds.push(AVX512);
            }
        }
        builds
    }

    /// Runs the build `simd` of the loop over `input[from..]` with a stage of `cap`.
    fn run(
        simd: u8,
        prefix: &[u8],
        input: &[u8],
        from: usize,
        cap: usize,
    ) -> ((usize, u64), Vec<u8>) {
        let mut stage = Vec::with_capacity(cap + STAGE_SLACK);
        // SAFETY: `builds` lists only the builds the processor can run.
        let r = unsafe {
            match simd {
                AVX512 => stage_lines::<AVX512>(prefix, input, from, &mut stage, cap),
                AVX2 => stage_lines::<AVX2>(prefix, input, from, &mut stage, cap),
                _ => stage_lines::<SSE2>(prefix, input, from, &mut stage, cap),
            }
        };
        (r, stage)
    }

    #[test]
    fn has_newline_finds_a_newline_anywhere_in_any_length() {
        for len in 0..=160 {
            let clean = vec![b'x'; len];
            assert!(!has_newline(&clean), "none in {len} bytes");
            for at in 0..len {
                let mut b = clean.clone();
                b[at] = b'\n';
                assert!(has_newline(&b), "at {at} of {len}");
                // A neighbour of '\n' (0x0a): 0x0b, 0x8a are not newlines.
                b[at] = 0x8a;
                assert!(!has_newline(&b), "0x8a at {at} of {len}");
            }
        }
    }

    #[test]
    fn every_build_stages_the_same_lines_and_stops_only_where_it_must() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        let mut inputs = vec![
            // A prefixed stream's common case: 64-byte lines (the fast loop's whole run).
            lines_of(5000, || 64),
            // Empty lines, each of which grows five-fold with `one `.
            lines_of(3000, || 1),
            // Lines around the longest the loop moves.
            lines_of(5000, || 63 + [0, 1, 2][random(3)]),
        ];
        for _ in 0..20 {
            // Mostly short lines, some long (where the loop stops).
            inputs.push(lines_of(3000 + random(2000), || match random(40) {
                0 => 65 + random(100),
                1..=4 => 1,
                _ => 1 + random(64),
            }));
        }
        let mut cases = 0;
        for input in &inputs {
            for prefix in [&b"p "[..], b"one ", b"fifteen-bytes! "] {
                for from in [0, 1, 63, 64, 65, 200, input.len() - 130, input.len() - 64] {
                    for cap in [96, 600, 1000, 8000, 1 << 16] {
                        let ((to, lines), staged) = run(SSE2, prefix, input, from, cap);
                        let at = format!("prefix {prefix:?} from {from} cap {cap}");
                        assert!(to == from || input[to - 1] == b'\n', "{at}: a line's start");
                        assert_eq!(staged, prefixed(&input[from..to], prefix), "{at}");
                        assert!(staged.len() <= cap, "{at}: within the cap");
                        let newlines = input[from..to].iter().filter(|&&b| b == b'\n').count();
                        assert_eq!(lines, newlines as u64, "{at}");
                        // Where it stopped, the next line could not be moved whole: too near
                        // the end, longer than SHORT_LINE, or past the cap.
                        if to + SHORT_LINE <= input.len() {
                            let next = input[to..to + SHORT_LINE].iter().position(|&b| b == b'\n');
                            if let Some(i) = next {
                                let grown = staged.len() + prefix.len() + i + 1;
                                assert!(grown > cap, "{at}: stopped at {to} before a short line");
                            }
                        }
                        for simd in builds() {
                            assert_eq!(
                                run(simd, prefix, input, from, cap),
                                ((to, lines), staged.clone()),
                                "{at}: build {simd}"
                            );
                        }
                        // The public entry point (whichever build the processor takes) agrees.
                        let mut stage = Vec::with_capacity(cap + STAGE_SLACK);
                        assert_eq!(
                            stage_short_lines(prefix, input, from, &mut stage, cap),
                            (to, lines),
                            "{at}"
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 23 * 3 * 8 * 5);
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
            for simd in builds() {
                // SAFETY: `builds` lists only the builds the processor can run.
                let mask = unsafe {
                    match simd {
                        AVX512 => newline_mask::<AVX512>(&input, start),
                        AVX2 => newline_mask::<AVX2>(&input, start),
                        _ => newline_mask::<SSE2>(&input, start),
                    }
                };
                assert_eq!(mask, want, "block at {start}, build {simd}");
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
