//! The echo itself: which bytes a client gets back for the bytes it sent. No I/O here.
//!
//! Every byte is echoed as soon as it is read: nothing is held back waiting for a newline
//! (RFC 862), so a health checker's `PING` without `\n` comes back at once. Newlines only
//! decide where the prefix goes: once, before the first byte of each line (`hello\n` ->
//! `one hello\n`; `PING` -> `one PING`).
//!
//! A read that holds one piece of a line (a client that waits for each reply: ping-pong, a
//! health check, a person at `nc`) takes [`Framer::frame_piece`]: one search for a newline
//! before its end, and the prefix and the piece copied into one write. Every other read:
//!
//! [`Framer::frame`] describes the echo of a read as [`Part`]s for one vectored write
//! (`sendmsg`): a line of [`COPY_BELOW`] bytes or more is written from the read buffer as it
//! is, after its prefix; shorter lines are copied, each with its prefix, into a staging buffer
//! and leave as one slice of it. (Each slice of a vectored write costs the kernel about as
//! much as copying a few hundred bytes: 64-byte lines as two slices each streamed at half the
//! speed of the plain echo, `make bench`.) Runs of lines of up to 64 bytes, the common case,
//! take a loop of their own with two fixed-size moves per line. The parts and the staged
//! bytes are bounded per call, so a read of one-byte lines leaves in several writes, never in
//! an array that grows with the input. Whatever the chunking of the input and the bounds, the concatenated parts equal
//! [`expected_echo`] of the concatenated input, and after every call they equal the expected
//! echo of all the input consumed so far: framing never delays a byte.

use std::io::IoSlice;

use memchr::memchr;
use tcp_echo_lines::{has_newline, newline_mask_sse2, stage_short_lines, PREFIX_PAD, STAGE_SLACK};

/// The longest prefix accepted (`--prefix`), in bytes.
pub(crate) const MAX_PREFIX: usize = 256;

/// Lines (or the open end of a read) shorter than this are copied with their prefix into the
/// staging buffer; longer ones are written from the read buffer. Copied, lines of a few KiB
/// leave in writes of at most the staging buffer (nine sixteenths of a read) rather than in one write of a
/// whole read, past one loopback segment, whose tail a pacing congestion control (BBR without
/// the fq qdisc) lets out only on its timer: 4 KiB lines streamed 1.40x to 1.53x as fast with
/// bbr, 0.92x to 1.05x with cubic (`make bench` A/B, one connection, 3 rounds each).
pub(crate) const COPY_BELOW: usize = 8192;

/// The smallest staging buffer [`Framer::frame`] accepts: room for the longest prefix (and
/// its space) and the longest line it copies, so that every call makes progress.
pub(crate) const MIN_STAGE: usize = MAX_PREFIX + 1 + COPY_BELOW;

/// One slice of a prefixed echo: a range of the staging buffer, or of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `stage[start..end]`.
    Staged(usize, usize),
    /// `input[start..end]`.
    Input(usize, usize),
}

impl Part {
    /// The bytes of this part.
    #[inline(always)]
    pub(crate) fn bytes<'a>(self, stage: &'a [u8], input: &'a [u8]) -> &'a [u8] {
        match self {
            Part::Staged(a, b) => &stage[a..b],
            Part::Input(a, b) => &input[a..b],
        }
    }
}

/// Line state of one connection's echo.
/// The longest piece whose newlines [`Framer::frame_piece`] looks for without `memchr`, which
/// reads less of a read of many lines (it stops at the first newline).
const SHORT_PIECE: usize = 128;

#[derive(Debug)]
pub(crate) struct Framer {
    /// Whether the next byte echoed begins a new line (and so needs the prefix).
    at_line_start: bool,
    /// Newlines echoed so far.
    newlines: u64,
}

impl Default for Framer {
    fn default() -> Self {
        Framer {
            at_line_start: true,
            newlines: 0,
        }
    }
}

/// The prefix as it goes before a line: the configured prefix and one space (`None` when
/// there is no prefix).
pub(crate) fn line_prefix(prefix: Option<&str>) -> Option<Vec<u8>> {
    prefix.filter(|p| !p.is_empty()).map(|p| {
        let mut v = Vec::with_capacity(p.len() + 1);
        v.extend_from_slice(p.as_bytes());
        v.push(b' ');
        v
    })
}

impl Framer {
    /// Frames the echo of the start of `input` into `parts` (after those already there) and
    /// the bytes they stage into `stage` (after those already there): `prefix` before the
    /// first byte of each line, each line from `input` or copied. Stops before `parts` holds
    /// more than `max_parts` (at least 2) or `stage` more than `stage_cap` bytes (at least
    /// [`MIN_STAGE`]), and returns how many bytes of `input` it covered (at least one line's
    /// worth when both start empty).
    pub(crate) fn frame(
        &mut self,
        prefix: &[u8],
        input: &[u8],
        stage: &mut Vec<u8>,
        stage_cap: usize,
        parts: &mut Vec<Part>,
        max_parts: usize,
    ) -> usize {
        debug_assert!(max_parts >= 2 && stage_cap >= MIN_STAGE && prefix.len() <= MAX_PREFIX + 1);
        // The staged part being extended, by where it starts in `stage`: pushed once a line
        // goes out as a slice or framing stops (not touched per line). A staged part at the
        // end of `parts` is extended, as it ends where `stage` does.
        let mut run = match parts.last() {
            Some(&Part::Staged(start, end)) if end == stage.len() => {
                parts.pop();
                Some(start)
            }
            _ => None,
        };
        let mut newlines = Newlines::new(input);
        let mut consumed = 0;
        while consumed < input.len() {
            // Runs of short lines go through the tight loop of `stage_short_lines`; the
            // line it stops at (long, open, or at a bound) is framed below.
            if self.at_line_start
                && (1..=PREFIX_PAD).contains(&prefix.len())
                && (run.is_some() || parts.len() < max_parts)
            {
                let start = stage.len();
                let rest = input.len() - consumed;
                let want = (stage_cap + STAGE_SLACK).min(start + 2 * rest + STAGE_SLACK);
                if stage.capacity() < want {
                    stage.reserve_exact(
                        want.max(2 * stage.capacity()).min(stage_cap + STAGE_SLACK) - start,
                    );
                }
                let (to, lines) = stage_short_lines(prefix, input, consumed, stage, stage_cap);
                if lines > 0 {
                    run.get_or_insert(start);
                    self.newlines += lines;
                    consumed = to;
                    if consumed == input.len() {
                        break;
                    }
                }
            }
            let rest = &input[consumed..];
            let (len, ends) = match newlines.find(consumed) {
                Some(i) => (i + 1 - consumed, true),
                None => (rest.len(), false),
            };
            let before: &[u8] = if self.at_line_start { prefix } else { &[] };
            let copied = len < COPY_BELOW;
            let staged = before.len() + if copied { len } else { 0 };
            let open = usize::from(run.is_some());
            let needed = open + usize::from(staged > 0 && run.is_none()) + usize::from(!copied);
            if parts.len() + needed > max_parts || stage.len() + staged > stage_cap {
                break;
            }
            if staged > 0 && run.is_none() {
                run = Some(stage.len());
            }
            append(stage, before);
            if copied {
                append(stage, &rest[..len]);
            } else {
                if let Some(start) = run.take() {
                    parts.push(Part::Staged(start, stage.len()));
                }
                parts.push(Part::Input(consumed, consumed + len));
            }
            self.at_line_start = ends;
            self.newlines += u64::from(ends);
            consumed += len;
        }
        if let Some(start) = run {
            parts.push(Part::Staged(start, stage.len()));
        }
        consumed
    }

    /// The echo of a read that holds one piece of a line, the common case of a client that
    /// waits for each reply (a whole line, the start of one, or its continuation: `input` has
    /// no newline but possibly its last byte), shorter than [`COPY_BELOW`]: one [`Part`], the
    /// prefix and the piece copied into `stage` (emptied first) or, within a line, the piece
    /// itself. `None` for any other read, which [`Framer::frame`] takes. One newline search,
    /// no list of parts (`make bench`'s ping-pong: half the user-space instructions of a
    /// round trip through [`Framer::frame`], callgrind).
    pub(crate) fn frame_piece(
        &mut self,
        prefix: &[u8],
        input: &[u8],
        stage: &mut Vec<u8>,
    ) -> Option<Part> {
        let (&last, head) = input.split_last()?;
        if input.len() >= COPY_BELOW {
            return None;
        }
        let inner_newline = if head.len() <= SHORT_PIECE {
            has_newline(head)
        } else {
            memchr(b'\n', head).is_some()
        };
        if inner_newline {
            return None;
        }
        let part = if self.at_line_start {
            stage.clear();
            append(stage, prefix);
            append(stage, input);
            Part::Staged(0, stage.len())
        } else {
            Part::Input(0, input.len())
        };
        self.at_line_start = last == b'\n';
        self.newlines += u64::from(self.at_line_start);
        Some(part)
    }

    /// Records that `input` was echoed unchanged (no prefix: the echo is the input).
    pub(crate) fn pass(&mut self, input: &[u8]) {
        if let Some(&last) = input.last() {
            self.newlines += count_newlines(input);
            self.at_line_start = last == b'\n';
        }
    }

    /// Lines echoed so far: every newline, plus the line still open, if its first byte was
    /// echoed (so `a\nb` counts 2 once both are echoed).
    pub(crate) fn lines(&self) -> u64 {
        self.newlines + u64::from(!self.at_line_start)
    }
}

/// Appends `src` to `out`. Up to 64 bytes are copied inline with two overlapping fixed-size
/// moves, as fast `memcpy` implementations do for short sizes (the static binary's musl
/// `memcpy` is slow to start on short, unaligned copies); longer slices go to `memcpy`.
#[inline(always)]
fn append(out: &mut Vec<u8>, src: &[u8]) {
    let n = src.len();
    if n > 64 {
        out.extend_from_slice(src);
        return;
    }
    // The capacity check inline: `Vec::reserve` is a call, once per line otherwise.
    if out.capacity() - out.len() < n {
        out.reserve(n);
    }
    // SAFETY: `reserve` made room for `n` more bytes after `len`. Each move below reads `N <= n`
    // bytes of `src`, starting at 0 or at `n - N`, and writes them at the same offsets in that
    // room; the two moves of a pair may overlap each other, never `src`. After them all `n`
    // bytes are initialised, so `set_len` is sound.
    unsafe {
        let (s, d) = (src.as_ptr(), out.as_mut_ptr().add(out.len()));
        #[inline(always)]
        unsafe fn pair<const N: usize>(s: *const u8, d: *mut u8, n: usize) {
            std::ptr::copy_nonoverlapping(s, d, N);
            std::ptr::copy_nonoverlapping(s.add(n - N), d.add(n - N), N);
        }
        match n {
            32..=64 => pair::<32>(s, d, n),
            16..=31 => pair::<16>(s, d, n),
            8..=15 => pair::<8>(s, d, n),
            4..=7 => pair::<4>(s, d, n),
            2..=3 => pair::<2>(s, d, n),
            1 => *d = *s,
            _ => {}
        }
        out.set_len(out.len() + n);
    }
}

/// An empty vector of slices that reuses the allocation of `v` (whose slices borrowed
/// something else): the slices of one read cannot outlive the read buffer, but their array
/// can serve every read. Collecting an emptied vector into one of the same layout keeps its
/// allocation (std's in-place collection; a unit test checks it).
pub(crate) fn recycle<'b>(mut v: Vec<IoSlice<'_>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// The newlines of one input, found in order. On x86_64 a block of 64 bytes is compared at
/// once (SSE2, part of every x86_64 CPU) into a bitmask, and each newline is a bit of it: a
/// search call per newline costs more than the search itself when lines are short (64-byte
/// lines: `memchr`'s calls took 12% of the prefixed stream's server CPU, `perf`); a line that
/// runs past its first block is crossed by `memchr`. Elsewhere each newline is a `memchr`.
pub(crate) struct Newlines<'a> {
    input: &'a [u8],
    /// Where the block of `mask` starts (a multiple of 64).
    #[cfg(target_arch = "x86_64")]
    start: usize,
    /// Bit `i`: `input[start + i]` is a newline.
    #[cfg(target_arch = "x86_64")]
    mask: u64,
}

impl<'a> Newlines<'a> {
    /// The newlines of `input`.
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Newlines {
            input,
            #[cfg(target_arch = "x86_64")]
            start: 0,
            #[cfg(target_arch = "x86_64")]
            mask: newline_mask_sse2(input, 0),
        }
    }

    /// The position of the first newline at or after `from`; `from` never goes back between
    /// calls.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(crate) fn find(&mut self, from: usize) -> Option<usize> {
        if from >= self.input.len() {
            return None;
        }
        let block = from & !63;
        if block != self.start {
            self.start = block;
            self.mask = newline_mask_sse2(self.input, block);
        }
        let ahead = self.mask & (u64::MAX << (from - block));
        if ahead != 0 {
            return Some(block + ahead.trailing_zeros() as usize);
        }
        // None in the rest of this block: a long line, which `memchr` (AVX2 where the CPU has
        // it) crosses faster than a mask per block (4 KiB lines: 1.5x the user-space time).
        let next = block + 64;
        memchr(b'\n', self.input.get(next..)?).map(|i| next + i)
    }

    /// The position of the first newline at or after `from`.
    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    pub(crate) fn find(&mut self, from: usize) -> Option<usize> {
        memchr(b'\n', self.input.get(from..)?).map(|i| from + i)
    }
}

/// Counts `\n` in `bytes`; written so that the compiler vectorises it (a search per newline
/// is slower when lines are short).
pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    bytecount::count(bytes, b'\n') as u64
}

/// The specified echo of a whole input: every line (the final one may lack `\n`) preceded by
/// the prefix and one space. The reference the framer is tested against.
#[cfg(test)]
pub(crate) fn expected_echo(input: &[u8], prefix: Option<&str>) -> Vec<u8> {
    let prefix = line_prefix(prefix).unwrap_or_default();
    let mut out = Vec::with_capacity(input.len());
    for line in input.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(&prefix);
        out.extend_from_slice(line);
    }
    out
}

/// The first piece of `input` as the `Received` records show them: up to and including the
/// first `\n`, or all of it when it holds none (the start of a line the read left open).
pub(crate) fn first_piece(input: &[u8]) -> &[u8] {
    match memchr(b'\n', input) {
        Some(i) => &input[..=i],
        None => input,
    }
}

/// How many pieces `input` holds: its lines, and the open end if it does not end a line.
pub(crate) fn count_pieces(input: &[u8]) -> u64 {
    match input.last() {
        None => 0,
        Some(&last) => count_newlines(input) + u64::from(last != b'\n'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames `input` once with empty buffers and bounds `max` parts and `cap` staged bytes:
    /// the bytes of the parts, one after the other, the parts, and the bytes covered.
    fn frame_once(
        f: &mut Framer,
        prefix: &[u8],
        input: &[u8],
        max: usize,
        cap: usize,
    ) -> (Vec<u8>, Vec<Part>, usize) {
        let (mut stage, mut parts) = (Vec::new(), Vec::new());
        let n = f.frame(prefix, input, &mut stage, cap, &mut parts, max);
        assert!(parts.len() <= max && stage.len() <= cap, "bounds");
        let bytes = parts
            .iter()
            .flat_map(|p| p.bytes(&stage, input).to_vec())
            .collect();
        (bytes, parts, n)
    }

    /// Echoes `chunks` (one read each) with at most `max` parts and `MIN_STAGE` staged bytes per
    /// write, the way a connection does; returns the bytes written and the lines counted.
    fn run(prefix: Option<&str>, max: usize, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        run_staged(prefix, max, MIN_STAGE, chunks)
    }

    /// [`run`] with `cap` staged bytes per write.
    fn run_staged(
        prefix: Option<&str>,
        max: usize,
        cap: usize,
        chunks: &[&[u8]],
    ) -> (Vec<u8>, u64) {
        let p = line_prefix(prefix);
        let mut f = Framer::default();
        let mut sent = Vec::new();
        for c in chunks {
            match &p {
                None => {
                    f.pass(c);
                    sent.extend_from_slice(c);
                }
                Some(p) => {
                    // As a connection echoes: a read of one piece of a line at once.
                    let mut stage = vec![b'!'; 3];
                    if let Some(part) = f.frame_piece(p, c, &mut stage) {
                        sent.extend_from_slice(part.bytes(&stage, c));
                        continue;
                    }
                    let mut rest: &[u8] = c;
                    while !rest.is_empty() {
                        let (bytes, _, n) = frame_once(&mut f, p, rest, max, cap);
                        assert!(n > 0, "no progress");
                        sent.extend_from_slice(&bytes);
                        rest = &rest[n..];
                    }
                }
            }
        }
        (sent, f.lines())
    }

    #[test]
    fn a_read_of_one_piece_of_a_line_is_one_part() {
        let p = line_prefix(Some("one")).unwrap();
        let mut f = Framer::default();
        let mut stage = b"left over".to_vec();
        let part = f.frame_piece(&p, b"hello\n", &mut stage);
        assert_eq!(
            part,
            Some(Part::Staged(0, 10)),
            "the prefix and the line, copied"
        );
        assert_eq!(part.unwrap().bytes(&stage, b"hello\n"), b"one hello\n");
        let part = f.frame_piece(&p, b"PI", &mut stage).unwrap();
        assert_eq!(part.bytes(&stage, b"PI"), b"one PI", "an open line at once");
        let part = f.frame_piece(&p, b"NG\n", &mut stage);
        assert_eq!(part, Some(Part::Input(0, 3)), "its continuation as it came");
        assert_eq!(f.lines(), 2);
        let mut g = Framer::default();
        assert_eq!(g.frame_piece(&p, b"a\nb\n", &mut stage), None, "two lines");
        assert_eq!(g.frame_piece(&p, b"", &mut stage), None, "nothing");
        let long = [b'x'; COPY_BELOW];
        assert_eq!(
            g.frame_piece(&p, &long, &mut stage),
            None,
            "a line not copied"
        );
        assert_eq!(g.lines(), 0, "a read not taken leaves the line state alone");
    }

    #[test]
    fn echoes_lines_with_prefix_in_the_istio_format() {
        let (out, lines) = run(Some("one"), 1024, &[b"hello\nworld\n"]);
        assert_eq!(out, b"one hello\none world\n");
        assert_eq!(lines, 2);
    }

    #[test]
    fn a_partial_line_comes_back_at_once_with_its_prefix() {
        let p = line_prefix(Some("one")).unwrap();
        let mut f = Framer::default();
        let (out, _, n) = frame_once(&mut f, &p, b"PING", 16, MIN_STAGE);
        assert_eq!(
            (out.as_slice(), n),
            (&b"one PING"[..], 4),
            "nothing waits for a newline"
        );
        let (out, _, n) = frame_once(&mut f, &p, b"PONG\nx", 16, MIN_STAGE);
        assert_eq!(
            (out.as_slice(), n),
            (&b"PONG\none x"[..], 6),
            "the open line continues without a second prefix"
        );
        assert_eq!(f.lines(), 2);
    }

    #[test]
    fn without_prefix_echo_is_identity() {
        assert_eq!(line_prefix(None), None);
        assert_eq!(line_prefix(Some("")), None);
        let mut f = Framer::default();
        f.pass(b"hello\nwor");
        assert_eq!(f.lines(), 2);
        f.pass(b"ld\n");
        assert_eq!(f.lines(), 2);
    }

    #[test]
    fn preserves_crlf_nul_and_invalid_utf8() {
        let input: &[u8] = b"a\r\n\0b\xff\xfe\n\r\n";
        let (out, _) = run(Some("p"), 1024, &[input]);
        assert_eq!(out, b"p a\r\np \0b\xff\xfe\np \r\n");
    }

    #[test]
    fn empty_lines_are_lines() {
        let (out, lines) = run(Some("p"), 1024, &[b"\n\n\n"]);
        assert_eq!(out, b"p \np \np \n");
        assert_eq!(lines, 3);
    }

    #[test]
    fn short_lines_are_staged_together_and_long_ones_written_from_the_input() {
        let p = line_prefix(Some("one")).unwrap();
        let long = vec![b'x'; COPY_BELOW];
        let mut input = b"a\nbb\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nc\n");
        let mut f = Framer::default();
        let (out, parts, n) = frame_once(&mut f, &p, &input, 16, MIN_STAGE);
        assert_eq!(n, input.len());
        assert_eq!(out, expected_echo(&input, Some("one")));
        // "one a\none bb\none " staged, the long line from the input, then "c\n" staged.
        assert_eq!(
            parts,
            vec![
                Part::Staged(0, 17),
                Part::Input(5, 5 + COPY_BELOW + 1),
                Part::Staged(17, 23)
            ]
        );
    }

    #[test]
    fn the_parts_and_the_stage_never_outgrow_their_bounds() {
        // 10,000 one-byte lines with a 6-byte prefix: 70,000 bytes staged, MIN_STAGE at a time.
        let input = vec![b'\n'; 10_000];
        let p = line_prefix(Some("abcde")).unwrap();
        let mut f = Framer::default();
        let mut rest = &input[..];
        let mut writes = 0;
        while !rest.is_empty() {
            let (_, parts, n) = frame_once(&mut f, &p, rest, 2, MIN_STAGE);
            assert!(parts.len() == 1 && n > 0);
            rest = &rest[n..];
            writes += 1;
        }
        assert!(writes >= 70_000 / MIN_STAGE, "{writes} writes");
        // Long lines: two parts each (the staged prefix, the line), `max` parts at a time.
        let line = vec![b'y'; COPY_BELOW + 10];
        let input: Vec<u8> = (0..100).flat_map(|_| [&line[..], b"\n"].concat()).collect();
        for max in [2, 3, 64] {
            let mut f = Framer::default();
            let mut rest = &input[..];
            let mut sent = Vec::new();
            while !rest.is_empty() {
                let (bytes, parts, n) = frame_once(&mut f, &p, rest, max, MIN_STAGE);
                assert!(parts.len() <= max && n > 0);
                sent.extend_from_slice(&bytes);
                rest = &rest[n..];
            }
            assert_eq!(sent, expected_echo(&input, Some("abcde")));
        }
    }

    #[test]
    fn lines_around_the_short_line_length_are_echoed_in_any_reads() {
        // Lines of 1 to 70 bytes (the tight loop takes those up to SHORT_LINE), cut into
        // reads of every size from 1 to 200, with staging bounds that stop it anywhere.
        let input: Vec<u8> = (1..=70)
            .chain((55..=70).rev())
            .flat_map(|n| [vec![b'a' + (n % 26) as u8; n - 1], vec![b'\n']].concat())
            .collect();
        for read in 1..=200 {
            for cap in [MIN_STAGE, MIN_STAGE + 37, 4 * MIN_STAGE] {
                let chunks: Vec<&[u8]> = input.chunks(read).collect();
                let (out, lines) = run_staged(Some("one"), 8, cap, &chunks);
                assert_eq!(out, expected_echo(&input, Some("one")), "reads of {read}");
                assert_eq!(lines, count_pieces(&input));
            }
        }
    }

    #[test]
    fn the_longest_prefix_is_echoed_whole() {
        let prefix = "p".repeat(MAX_PREFIX);
        let (out, _) = run(Some(&prefix), 2, &[b"a\nb\nc"]);
        assert_eq!(out, expected_echo(b"a\nb\nc", Some(&prefix)));
    }

    #[test]
    fn one_read_with_many_lines_keeps_order() {
        let input: Vec<u8> = (0..500)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let (out, lines) = run(Some("two"), 300, &[&input]);
        assert_eq!(out, expected_echo(&input, Some("two")));
        assert_eq!(lines, 500);
    }

    #[test]
    fn a_recycled_vector_keeps_its_allocation() {
        let data = vec![1u8; 10];
        let mut v: Vec<IoSlice<'_>> = Vec::with_capacity(1024);
        v.push(IoSlice::new(&data));
        let ptr = v.as_ptr() as usize;
        let again: Vec<IoSlice<'static>> = recycle(v);
        assert_eq!((again.len(), again.capacity()), (0, 1024));
        assert_eq!(
            again.as_ptr() as usize,
            ptr,
            "the allocation was not reused"
        );
    }

    #[test]
    fn newlines_are_counted_across_chunk_edges() {
        for n in [0, 1, 254, 255, 256, 511, 1000] {
            let input: Vec<u8> = (0..n)
                .map(|i| if i % 3 == 0 { b'\n' } else { b'a' })
                .collect();
            let want = input.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(count_newlines(&input), want, "length {n}");
        }
        assert_eq!(count_newlines(&[b'\n'; 1000]), 1000);
    }

    #[test]
    fn pieces_are_lines_and_the_open_end() {
        assert_eq!(first_piece(b"a\nbc\nd"), b"a\n");
        assert_eq!(first_piece(b"bcd"), b"bcd");
        assert_eq!(count_pieces(b"a\nbc\nd"), 3);
        assert_eq!(count_pieces(b"a\nbc\n"), 2);
        assert_eq!(count_pieces(b""), 0);
    }

    #[test]
    fn expected_echo_handles_edges() {
        assert_eq!(expected_echo(b"", Some("x")), b"");
        assert_eq!(expected_echo(b"a", Some("x")), b"x a");
        assert_eq!(expected_echo(b"a\n\nb", None), b"a\n\nb");
    }

    /// Input bytes biased towards newlines and CR, so that lines are short and many.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                4 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => Just(0u8),
                6 => any::<u8>(),
            ],
            0..2000,
        )
    }

    /// Input of lines whose lengths straddle [`COPY_BELOW`], some without their newline.
    fn long_and_short_lines() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec((0usize..2 * COPY_BELOW, any::<bool>(), any::<u8>()), 0..12).prop_map(
            |lines| {
                lines
                    .into_iter()
                    .flat_map(|(len, newline, b)| {
                        let fill = if b == b'\n' { b'z' } else { b };
                        let mut l = vec![fill; len];
                        if newline {
                            l.push(b'\n');
                        }
                        l
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Lines long and short, staged and not, any read boundaries and bounds: the echo.
        #[test]
        fn staged_and_unstaged_lines_make_the_specified_echo(
            input in long_and_short_lines(),
            cuts in prop::collection::vec(0usize..6000, 0..8),
            max in 2usize..10,
            cap in MIN_STAGE..3 * MIN_STAGE,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut from = 0;
            let mut chunks = Vec::new();
            for c in cuts {
                chunks.push(&input[from..c]);
                from = c;
            }
            let (out, lines) = run_staged(Some("one"), max, cap, &chunks);
            prop_assert_eq!(out, expected_echo(&input, Some("one")));
            prop_assert_eq!(lines, count_pieces(&input));
        }

        /// For any input, any read boundaries and any bound on slices: the output is the
        /// specified echo, and after every read it is the echo of everything read so far
        /// (nothing is held back for a newline).
        #[test]
        fn framing_is_the_specified_echo_after_every_read(
            input in bytes(),
            cuts in prop::collection::vec(0usize..2000, 0..20),
            max in 2usize..40,
            // With its space, the last prefix is the longest that `stage_short_lines` moves
            // in one piece.
            prefix in prop_oneof![Just(None), Just(Some("one")), Just(Some("p")), Just(Some("fifteen-bytes!!"))],
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut from = 0;
            let mut chunks = Vec::new();
            for c in cuts {
                chunks.push(&input[from..c]);
                from = c;
            }
            for upto in 0..=chunks.len() {
                let (out, _) = run(prefix, max, &chunks[..upto]);
                let read: Vec<u8> = chunks[..upto].concat();
                prop_assert_eq!(out, expected_echo(&read, prefix));
            }
            let (_, lines) = run(prefix, max, &chunks);
            prop_assert_eq!(lines, count_pieces(&input), "lines are counted alike with and without a prefix");
        }

        /// Where a read is one piece of a line, its part is what [`Framer::frame`] makes of
        /// it, and the line state after it is the same; other reads are left to `frame`.
        #[test]
        fn a_piece_is_framed_as_frame_frames_it(
            input in long_and_short_lines(),
            cuts in prop::collection::vec(0usize..6000, 0..12),
            prefix in prop_oneof![Just("one"), Just("p"), Just("fifteen-bytes!!")],
        ) {
            let p = line_prefix(Some(prefix)).unwrap();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let (mut by_piece, mut by_frame) = (Framer::default(), Framer::default());
            let mut stage = Vec::new();
            let mut from = 0;
            for c in cuts {
                let read = &input[from..c];
                from = c;
                let one_piece = !read.is_empty()
                    && read.len() < COPY_BELOW
                    && !read[..read.len() - 1].contains(&b'\n');
                let piece = by_piece.frame_piece(&p, read, &mut stage);
                prop_assert_eq!(piece.is_some(), one_piece);
                let mut framed = Vec::new();
                let mut rest = read;
                while !rest.is_empty() {
                    let (bytes, _, n) = frame_once(&mut by_frame, &p, rest, 16, MIN_STAGE);
                    framed.extend_from_slice(&bytes);
                    rest = &rest[n..];
                }
                match piece {
                    Some(part) => prop_assert_eq!(part.bytes(&stage, read), &framed[..]),
                    None => {
                        let mut rest = read;
                        while !rest.is_empty() {
                            let (_, _, n) = frame_once(&mut by_piece, &p, rest, 16, MIN_STAGE);
                            rest = &rest[n..];
                        }
                    }
                }
                prop_assert_eq!(by_piece.at_line_start, by_frame.at_line_start);
                prop_assert_eq!(by_piece.lines(), by_frame.lines());
            }
        }

        /// The newlines found 64 bytes at a time are `memchr`'s, from any start, in blocks
        /// cut anywhere and at the input's end.
        #[test]
        fn newlines_are_found_where_memchr_finds_them(
            input in prop::collection::vec(prop_oneof![Just(b'\n'), Just(b'a'), any::<u8>()], 0..400),
            steps in prop::collection::vec(0usize..100, 0..20),
        ) {
            let mut newlines = Newlines::new(&input);
            let mut from = 0;
            for step in steps.into_iter().chain(std::iter::repeat_n(1, input.len() + 1)) {
                let want = memchr(b'\n', &input[from.min(input.len())..]).map(|i| from + i);
                prop_assert_eq!(newlines.find(from), want, "from {}", from);
                from += step;
            }
        }

        /// A read falls into pieces (the `Received` records) that make it up.
        #[test]
        fn a_read_falls_into_pieces_that_make_it_up(input in bytes()) {
            let mut rest = &input[..];
            let mut pieces = 0;
            let mut joined = Vec::new();
            while !rest.is_empty() {
                let p = first_piece(rest);
                prop_assert!(!p.is_empty());
                prop_assert!(!p[..p.len() - 1].contains(&b'\n'));
                joined.extend_from_slice(p);
                rest = &rest[p.len()..];
                pieces += 1;
            }
            prop_assert_eq!(joined, input.clone());
            prop_assert_eq!(pieces, count_pieces(&input));
        }
    }
}
