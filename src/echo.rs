//! The echo itself: which bytes a client gets back for the bytes it sent. No I/O here.
//!
//! Every byte is echoed as soon as it is read: nothing is held back waiting for a newline
//! (RFC 862), so a health checker's `PING` without `\n` comes back at once. Newlines only
//! decide where the prefix goes: once, before the first byte of each line (`hello\n` ->
//! `one hello\n`; `PING` -> `one PING`).
//!
//! Nothing is copied: [`Framer::slices`] describes the echo of a read as slices, the prefix
//! and the pieces of the read between line starts, for one vectored write (`writev`). Their
//! number is bounded per call, so a read of one-byte lines leaves in several writes, never in
//! an array that grows with the input. Whatever the chunking of the input and the bound, the
//! concatenated slices equal [`expected_echo`] of the concatenated input, and after every call
//! they equal the expected echo of all the input consumed so far: framing never delays a byte.

use std::io::IoSlice;

use memchr::memchr;

/// The longest prefix accepted (`--prefix`), in bytes.
pub(crate) const MAX_PREFIX: usize = 256;

/// Line state of one connection's echo.
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
    /// Appends to `out` the slices of the echo of the start of `input`: `prefix` before the
    /// first byte of each line, and the pieces of `input`. Stops before `out` holds more than
    /// `max` slices (at least 2) and returns how many bytes of `input` it covered.
    pub(crate) fn slices<'a>(
        &mut self,
        prefix: &'a [u8],
        input: &'a [u8],
        out: &mut Vec<IoSlice<'a>>,
        max: usize,
    ) -> usize {
        debug_assert!(max >= 2);
        let mut consumed = 0;
        while consumed < input.len() {
            if self.at_line_start {
                if out.len() + 2 > max {
                    break;
                }
                out.push(IoSlice::new(prefix));
                self.at_line_start = false;
            } else if out.len() + 1 > max {
                break;
            }
            let rest = &input[consumed..];
            let line = match memchr(b'\n', rest) {
                Some(i) => {
                    self.at_line_start = true;
                    self.newlines += 1;
                    &rest[..=i]
                }
                None => rest,
            };
            out.push(IoSlice::new(line));
            consumed += line.len();
        }
        consumed
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

/// An empty vector of slices that reuses the allocation of `v` (whose slices borrowed
/// something else): the slices of one read cannot outlive the read buffer, but their array
/// can serve every read. Collecting an emptied vector into one of the same layout keeps its
/// allocation (std's in-place collection; a unit test checks it).
pub(crate) fn recycle<'b>(mut v: Vec<IoSlice<'_>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// Counts `\n` in `bytes`; written so that the compiler vectorises it (a search per newline
/// is slower when lines are short).
pub(crate) fn count_newlines(bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    // Per-chunk byte counters cannot overflow below 256 bytes.
    for chunk in bytes.chunks(255) {
        let n: u8 = chunk.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'));
        total += u64::from(n);
    }
    total
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

    /// The bytes of `slices`, one after the other.
    fn joined(slices: &[IoSlice<'_>]) -> Vec<u8> {
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    /// Echoes `chunks` (one read each) with at most `max` slices per write, the way a
    /// connection does; returns the bytes written and the lines counted.
    fn run(prefix: Option<&str>, max: usize, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
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
                    let mut rest: &[u8] = c;
                    while !rest.is_empty() {
                        let mut out = Vec::new();
                        let n = f.slices(p, rest, &mut out, max);
                        assert!(n > 0, "no progress");
                        assert!(out.len() <= max);
                        for s in &out {
                            sent.extend_from_slice(s);
                        }
                        rest = &rest[n..];
                    }
                }
            }
        }
        (sent, f.lines())
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
        let mut out = Vec::new();
        assert_eq!(f.slices(&p, b"PING", &mut out, 16), 4);
        assert_eq!(joined(&out), b"one PING", "nothing waits for a newline");
        out.clear();
        assert_eq!(f.slices(&p, b"PONG\nx", &mut out, 16), 6);
        assert_eq!(
            joined(&out),
            b"PONG\none x",
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
    fn the_slices_never_outnumber_their_bound() {
        // 10,000 one-byte lines make 20,000 slices: written 2 at a time, or 1,024.
        for max in [2, 3, 1024] {
            let input = vec![b'\n'; 10_000];
            let p = line_prefix(Some("abcde")).unwrap();
            let mut f = Framer::default();
            let mut rest = &input[..];
            let mut writes = 0;
            while !rest.is_empty() {
                let mut out = Vec::new();
                let n = f.slices(&p, rest, &mut out, max);
                assert!(out.len() <= max && n > 0);
                rest = &rest[n..];
                writes += 1;
            }
            assert!(writes >= 20_000 / max, "{writes} writes of {max}");
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// For any input, any read boundaries and any bound on slices: the output is the
        /// specified echo, and after every read it is the echo of everything read so far
        /// (nothing is held back for a newline).
        #[test]
        fn framing_is_the_specified_echo_after_every_read(
            input in bytes(),
            cuts in prop::collection::vec(0usize..2000, 0..20),
            max in 2usize..40,
            prefix in prop_oneof![Just(None), Just(Some("one")), Just(Some("p"))],
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
