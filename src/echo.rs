//! Line framing: turns the bytes a client sends into the bytes it gets back.
//!
//! This module does no I/O. [`Framer::feed`] takes whatever one `read` brought and appends the
//! replies for it to an output buffer, so the connection code can send all of them in a single
//! `write`. The rules:
//!
//! * a line is the bytes up to and including `\n`; it comes back byte for byte, preceded by the
//!   prefix and one space when a prefix is set (`hello\n` -> `one hello\n`);
//! * a line that is not yet complete is held back until its `\n` arrives, but never more than
//!   `max_line` bytes of it: once that much is held, it is sent as a piece and the rest of the
//!   line follows as it arrives (the prefix still appears once, at the start of the line);
//! * at the end of input, [`Framer::finish`] sends whatever partial line is held.
//!
//! Whatever the chunking of the input and whatever `max_line`, the concatenated output equals
//! [`expected_echo`] of the concatenated input: framing only decides *when* bytes leave.

use memchr::memchr;

/// One piece of a line handed to the observer of [`Framer::feed`]: a whole line, or part of a
/// line longer than `max_line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The bytes of this piece, including the `\n` when the piece ends a line.
    pub bytes: &'a [u8],
    /// True when the piece ends with the line's `\n` (or is the final partial line at EOF).
    pub ends_line: bool,
}

/// Incremental line framer for one connection.
///
/// Memory: the framer holds at most `max_line` bytes of an incomplete line; the buffer grows
/// only when a line is actually split across reads.
#[derive(Debug)]
pub struct Framer {
    /// Prefix followed by one space, or empty.
    prefix: Vec<u8>,
    max_line: usize,
    /// The held-back start of an incomplete line (at most `max_line` bytes).
    pending: Vec<u8>,
    /// Whether the next byte sent begins a new line (and so needs the prefix).
    at_line_start: bool,
    lines: u64,
}

impl Framer {
    /// A framer that prefixes each line with `prefix` and one space (no prefix when `None` or
    /// empty) and holds back at most `max_line` bytes (at least 1) of an incomplete line.
    pub fn new(prefix: Option<&str>, max_line: usize) -> Framer {
        let prefix = match prefix {
            Some(p) if !p.is_empty() => format!("{p} ").into_bytes(),
            _ => Vec::new(),
        };
        Framer {
            prefix,
            max_line: max_line.max(1),
            pending: Vec::new(),
            at_line_start: true,
            lines: 0,
        }
    }

    /// Frames `input` and appends the replies it completes to `out`. `observe` sees every piece
    /// sent, in order (used for logging; pass `|_| {}` when nothing listens).
    pub fn feed(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        mut observe: impl FnMut(Piece<'_>),
    ) {
        while !input.is_empty() {
            match memchr(b'\n', input) {
                Some(i) => {
                    let (line_end, rest) = input.split_at(i + 1);
                    input = rest;
                    self.lines += 1;
                    if self.pending.is_empty() {
                        self.emit_slice(line_end, true, out, &mut observe);
                    } else if self.pending.len() + line_end.len() <= self.max_line {
                        self.pending.extend_from_slice(line_end);
                        self.emit_pending(true, out, &mut observe);
                    } else {
                        self.emit_pending(false, out, &mut observe);
                        self.emit_slice(line_end, true, out, &mut observe);
                    }
                }
                None => {
                    let room = self.max_line - self.pending.len();
                    let (held, rest) = input.split_at(room.min(input.len()));
                    input = rest;
                    self.pending.extend_from_slice(held);
                    if self.pending.len() == self.max_line {
                        self.emit_pending(false, out, &mut observe);
                    }
                }
            }
        }
    }

    /// End of input: appends the held partial line, if any, to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>, mut observe: impl FnMut(Piece<'_>)) {
        if !self.pending.is_empty() {
            self.lines += 1;
            self.emit_pending(true, out, &mut observe);
        }
    }

    /// Lines completed so far (a final partial line counts once [`Framer::finish`] sent it).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Bytes of an incomplete line currently held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Capacity of the hold-back buffer (bounded by `max_line`, plus allocator rounding).
    pub fn pending_capacity(&self) -> usize {
        self.pending.capacity()
    }

    fn emit_slice(
        &mut self,
        bytes: &[u8],
        ends_line: bool,
        out: &mut Vec<u8>,
        observe: &mut impl FnMut(Piece<'_>),
    ) {
        if self.at_line_start {
            append(out, &self.prefix);
        }
        append(out, bytes);
        self.at_line_start = ends_line;
        observe(Piece { bytes, ends_line });
    }

    fn emit_pending(
        &mut self,
        ends_line: bool,
        out: &mut Vec<u8>,
        observe: &mut impl FnMut(Piece<'_>),
    ) {
        let pending = std::mem::take(&mut self.pending);
        self.emit_slice(&pending, ends_line, out, observe);
        self.pending = pending;
        self.pending.clear();
        // A long line grew the buffer to `max_line`; do not keep that much for a quiet client.
        if self.pending.capacity() > SHRINK_ABOVE {
            self.pending.shrink_to(SHRINK_ABOVE);
        }
    }
}

/// Appends `src` to `out`. Up to 64 bytes are copied inline with two overlapping fixed-size
/// moves, as fast `memcpy` implementations do for short sizes; longer slices go to `memcpy`.
/// The echo path copies two short slices per line (prefix and line), and the static binary's
/// musl `memcpy` is slow to start on short, unaligned copies.
#[inline(always)]
pub fn append(out: &mut Vec<u8>, src: &[u8]) {
    let n = src.len();
    if n > 64 {
        out.extend_from_slice(src);
        return;
    }
    out.reserve(n);
    // SAFETY: `reserve` made room for `n` more bytes after `len`. Every move below reads
    // inside `src` (each reads `N <= n` bytes starting at 0 or at `n - N`) and writes inside
    // that reserved room; the two moves of a pair may overlap each other, never `src`. After
    // them, all `n` bytes are initialised and `set_len` is sound.
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

/// Hold-back capacity kept between lines; anything above (a line much longer than a read) is
/// released after use. As large as a read, so that lines spanning reads cause no reallocation.
const SHRINK_ABOVE: usize = 64 * 1024;

/// The specified echo of a whole input: every line (the final one may lack `\n`) preceded by
/// the prefix and one space. The reference the framer is tested against.
pub fn expected_echo(input: &[u8], prefix: Option<&str>) -> Vec<u8> {
    let prefix = match prefix {
        Some(p) if !p.is_empty() => format!("{p} ").into_bytes(),
        _ => Vec::new(),
    };
    let mut out = Vec::with_capacity(input.len());
    for line in input.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(&prefix);
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        prefix: Option<&str>,
        max_line: usize,
        chunks: &[&[u8]],
    ) -> (Vec<u8>, Vec<(Vec<u8>, bool)>) {
        let mut f = Framer::new(prefix, max_line);
        let mut out = Vec::new();
        let mut pieces = Vec::new();
        for c in chunks {
            f.feed(c, &mut out, |p| {
                pieces.push((p.bytes.to_vec(), p.ends_line))
            });
        }
        f.finish(&mut out, |p| pieces.push((p.bytes.to_vec(), p.ends_line)));
        (out, pieces)
    }

    #[test]
    fn echoes_lines_with_prefix_in_the_istio_format() {
        let (out, _) = run(Some("one"), 1024, &[b"hello\nworld\n"]);
        assert_eq!(out, b"one hello\none world\n");
    }

    #[test]
    fn without_prefix_echo_is_identity() {
        let (out, _) = run(None, 1024, &[b"hello\n", b"x\n"]);
        assert_eq!(out, b"hello\nx\n");
        let (out, _) = run(Some(""), 1024, &[b"hello\n"]);
        assert_eq!(out, b"hello\n");
    }

    #[test]
    fn preserves_crlf_nul_and_invalid_utf8() {
        let input: &[u8] = b"a\r\n\0b\xff\xfe\n\r\n";
        let (out, _) = run(Some("p"), 1024, &[input]);
        assert_eq!(out, b"p a\r\np \0b\xff\xfe\np \r\n");
    }

    #[test]
    fn empty_lines_are_lines() {
        let (out, pieces) = run(Some("p"), 1024, &[b"\n\n\n"]);
        assert_eq!(out, b"p \np \np \n");
        assert_eq!(pieces.len(), 3);
    }

    #[test]
    fn final_line_without_newline_comes_back_at_finish() {
        let mut f = Framer::new(Some("one"), 1024);
        let mut out = Vec::new();
        f.feed(b"a\nb", &mut out, |_| {});
        assert_eq!(out, b"one a\n", "partial line is held until EOF");
        f.finish(&mut out, |_| {});
        assert_eq!(out, b"one a\none b");
        assert_eq!(f.lines(), 2);
    }

    #[test]
    fn a_line_split_across_reads_is_sent_whole() {
        let mut f = Framer::new(Some("one"), 1024);
        let mut out = Vec::new();
        f.feed(b"hel", &mut out, |_| {});
        assert!(out.is_empty());
        let mut pieces = 0;
        f.feed(b"lo\n", &mut out, |p| {
            assert_eq!(p.bytes, b"hello\n");
            pieces += 1;
        });
        assert_eq!(out, b"one hello\n");
        assert_eq!(pieces, 1);
    }

    #[test]
    fn long_lines_go_out_in_pieces_with_one_prefix() {
        let mut f = Framer::new(Some("one"), 4);
        let mut out = Vec::new();
        f.feed(b"abcdefghij", &mut out, |_| {});
        // Two full pieces of 4 bytes left before the newline arrived; 2 bytes are held.
        assert_eq!(out, b"one abcdefgh");
        assert_eq!(f.pending_len(), 2);
        f.feed(b"k\nxy\n", &mut out, |_| {});
        assert_eq!(out, b"one abcdefghijk\none xy\n");
    }

    #[test]
    fn held_bytes_never_exceed_max_line() {
        let mut f = Framer::new(None, 100);
        let mut out = Vec::new();
        for _ in 0..1000 {
            f.feed(&[b'z'; 37], &mut out, |_| {});
            assert!(f.pending_len() <= 100);
        }
        assert!(f.pending_capacity() <= SHRINK_ABOVE);
        assert_eq!(out.len() + f.pending_len(), 37_000);
    }

    #[test]
    fn pending_plus_tail_longer_than_max_line_is_split() {
        let (out, pieces) = run(None, 4, &[b"abc", b"defg\n"]);
        assert_eq!(out, b"abcdefg\n");
        assert!(pieces.iter().all(|(p, _)| p.len() <= 5));
        assert_eq!(pieces.last().map(|p| p.1), Some(true));
    }

    #[test]
    fn one_read_with_many_lines_keeps_order() {
        let input: Vec<u8> = (0..500)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let (out, pieces) = run(Some("two"), 16, &[&input]);
        assert_eq!(out, expected_echo(&input, Some("two")));
        assert_eq!(pieces.len(), 500);
    }

    #[test]
    fn append_copies_every_length_exactly() {
        let src: Vec<u8> = (0..=200u8).collect();
        for start in 0..3 {
            for n in 0..=130 {
                let mut out = vec![9u8; start];
                append(&mut out, &src[..n]);
                assert_eq!(&out[..start], &vec![9u8; start][..]);
                assert_eq!(&out[start..], &src[..n], "length {n} after {start}");
            }
        }
    }

    #[test]
    fn expected_echo_handles_edges() {
        assert_eq!(expected_echo(b"", Some("x")), b"");
        assert_eq!(expected_echo(b"a", Some("x")), b"x a");
        assert_eq!(expected_echo(b"a\n\nb", None), b"a\n\nb");
    }
}
