//! The echo itself: turns the bytes a client sends into the bytes it gets back.
//!
//! This module does no I/O. Every byte is echoed as soon as it is read: nothing is held back
//! waiting for a newline (RFC 862), so a health checker's `PING` without `\n` comes back at
//! once. Newlines only decide where the prefix goes: once, before the first byte of each line
//! (`hello\n` -> `one hello\n`; `PING` -> `one PING`).
//!
//! Without a prefix the echo is the input itself, and the connection writes it straight from
//! its read buffer; [`Framer::pass`] only keeps count. With a prefix, [`Framer::feed`] copies
//! the input into an output buffer with the prefixes inserted, never past a given length, so a
//! read of one-byte lines cannot make the output grow without bound: the caller writes what
//! was framed and feeds the rest.
//!
//! Whatever the chunking of the input and whatever the output limit, the concatenated output
//! equals [`expected_echo`] of the concatenated input, and after every call it equals the
//! expected echo of all the input consumed so far: framing never delays a byte.

use memchr::memchr;

/// The longest prefix accepted (`--prefix`), in bytes. With the space after it, a prefix and
/// the first byte of a line always fit in an output buffer of [`MIN_OUTPUT`] bytes.
pub const MAX_PREFIX: usize = 256;

/// The smallest output limit [`Framer::feed`] accepts: room for the longest prefix, its space
/// and one byte of the line.
pub const MIN_OUTPUT: usize = MAX_PREFIX + 2;

/// Line state of one connection's echo.
#[derive(Debug)]
pub struct Framer {
    /// Prefix followed by one space, or empty.
    prefix: Vec<u8>,
    /// Whether the next byte echoed begins a new line (and so needs the prefix).
    at_line_start: bool,
    /// Newlines echoed so far.
    newlines: u64,
}

impl Framer {
    /// A framer that puts `prefix` and one space before each line (nothing when `None` or
    /// empty). Prefixes longer than [`MAX_PREFIX`] bytes are cut there (configuration rejects
    /// them before this point).
    pub fn new(prefix: Option<&str>) -> Framer {
        let prefix = match prefix {
            Some(p) if !p.is_empty() => {
                let p = &p.as_bytes()[..p.len().min(MAX_PREFIX)];
                let mut v = Vec::with_capacity(p.len() + 1);
                v.extend_from_slice(p);
                v.push(b' ');
                v
            }
            _ => Vec::new(),
        };
        Framer {
            prefix,
            at_line_start: true,
            newlines: 0,
        }
    }

    /// Whether the echo is the input unchanged (no prefix): the caller may send the input
    /// itself and call [`Framer::pass`] instead of [`Framer::feed`].
    pub fn is_identity(&self) -> bool {
        self.prefix.is_empty()
    }

    /// Appends the echo of the start of `input` to `out`, without letting `out` grow past
    /// `limit` bytes (at least [`MIN_OUTPUT`] more than `out` holds, or this may consume
    /// nothing), and returns how many input bytes it consumed. A prefix is only written
    /// together with the first byte of its line.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> usize {
        let mut consumed = 0;
        while consumed < input.len() {
            let mut room = limit.saturating_sub(out.len());
            if self.at_line_start {
                if room <= self.prefix.len() {
                    break;
                }
                append(out, &self.prefix);
                room -= self.prefix.len();
                self.at_line_start = false;
            }
            let rest = &input[consumed..];
            let window = &rest[..rest.len().min(room)];
            if window.is_empty() {
                break;
            }
            match memchr(b'\n', window) {
                Some(i) => {
                    append(out, &window[..=i]);
                    consumed += i + 1;
                    self.at_line_start = true;
                    self.newlines += 1;
                }
                None => {
                    append(out, window);
                    consumed += window.len();
                }
            }
        }
        consumed
    }

    /// Records that `input` was echoed unchanged (the identity echo, no prefix).
    pub fn pass(&mut self, input: &[u8]) {
        if let Some(&last) = input.last() {
            self.newlines += count_newlines(input);
            self.at_line_start = last == b'\n';
        }
    }

    /// Lines echoed so far: every newline, plus the line still open, if its first byte was
    /// echoed (so `a\nb` counts 2 once both are echoed).
    pub fn lines(&self) -> u64 {
        self.newlines + u64::from(!self.at_line_start)
    }
}

/// Counts `\n` in `bytes`; written so that the compiler vectorises it (a search per newline
/// is slower when lines are short).
pub fn count_newlines(bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    // Per-chunk byte counters cannot overflow below 256 bytes.
    for chunk in bytes.chunks(255) {
        let n: u8 = chunk.iter().fold(0u8, |n, &b| n + u8::from(b == b'\n'));
        total += u64::from(n);
    }
    total
}

/// Appends `src` to `out`. Up to 64 bytes are copied inline with two overlapping fixed-size
/// moves, as fast `memcpy` implementations do for short sizes; longer slices go to `memcpy`.
/// The prefixed echo copies two short slices per line (prefix and line), and the static
/// binary's musl `memcpy` is slow to start on short, unaligned copies.
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

/// The first piece of `input` as the `Received` records show them: up to and including the
/// first `\n`, or all of it when it holds none (the start of a line the read left open).
pub fn first_piece(input: &[u8]) -> &[u8] {
    match memchr(b'\n', input) {
        Some(i) => &input[..=i],
        None => input,
    }
}

/// How many pieces `input` holds: its lines, and the open end if it does not end a line.
pub fn count_pieces(input: &[u8]) -> u64 {
    match input.last() {
        None => 0,
        Some(&last) => count_newlines(input) + u64::from(last != b'\n'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` through a framer with output limit `limit`, the way a connection does
    /// (frame, "write", frame the rest); returns the output.
    fn run(prefix: Option<&str>, limit: usize, chunks: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut f = Framer::new(prefix);
        let mut sent = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            let mut rest: &[u8] = c;
            while !rest.is_empty() {
                let n = f.feed(rest, &mut out, limit);
                assert!(n > 0, "no progress");
                assert!(out.len() <= limit);
                rest = &rest[n..];
                sent.append(&mut out);
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
        let mut f = Framer::new(Some("one"));
        let mut out = Vec::new();
        assert_eq!(f.feed(b"PING", &mut out, 1024), 4);
        assert_eq!(out, b"one PING", "nothing waits for a newline");
        out.clear();
        assert_eq!(f.feed(b"PONG\nx", &mut out, 1024), 6);
        assert_eq!(
            out, b"PONG\none x",
            "the open line continues without a second prefix"
        );
        assert_eq!(f.lines(), 2);
    }

    #[test]
    fn without_prefix_echo_is_identity() {
        let mut f = Framer::new(None);
        assert!(f.is_identity());
        f.pass(b"hello\nwor");
        assert_eq!(f.lines(), 2);
        f.pass(b"ld\n");
        assert_eq!(f.lines(), 2);
        assert!(Framer::new(Some("")).is_identity());
        assert!(!Framer::new(Some("one")).is_identity());
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
    fn the_output_never_grows_past_its_limit() {
        // One-byte lines with a long prefix: 10 000 input bytes make 60 000 output bytes.
        let input = vec![b'\n'; 10_000];
        let prefix = "abcde";
        let mut f = Framer::new(Some(prefix));
        let mut out = Vec::new();
        let mut rest = &input[..];
        let mut writes = 0;
        while !rest.is_empty() {
            let n = f.feed(rest, &mut out, MIN_OUTPUT);
            assert!(out.len() <= MIN_OUTPUT);
            assert!(n > 0);
            rest = &rest[n..];
            out.clear();
            writes += 1;
        }
        assert!(writes >= 60_000 / MIN_OUTPUT);
    }

    #[test]
    fn the_longest_prefix_always_makes_progress_in_the_smallest_buffer() {
        let prefix = "p".repeat(MAX_PREFIX);
        let (out, _) = run(Some(&prefix), MIN_OUTPUT, &[b"a\nb\nc"]);
        assert_eq!(out, expected_echo(b"a\nb\nc", Some(&prefix)));
    }

    #[test]
    fn a_longer_prefix_is_cut_at_the_maximum() {
        let long = "x".repeat(MAX_PREFIX + 10);
        let (out, _) = run(Some(&long), 4096, &[b"a"]);
        assert_eq!(out.len(), MAX_PREFIX + 2);
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
