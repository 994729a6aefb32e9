//! Properties of the echo, for arbitrary bytes, arbitrary read boundaries and an arbitrary
//! output limit:
//! * the output is the specified echo (the prefix once per line start, every byte in order);
//! * it is prompt: after each read, everything read so far has been echoed, nothing is held
//!   back waiting for a newline;
//! * the output buffer never grows past its limit.

use proptest::prelude::*;
use tcp_echo::echo::{count_pieces, expected_echo, first_piece, Framer, MIN_OUTPUT};

/// Bytes with plenty of newlines, `\r`, NUL and invalid UTF-8.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            2 => Just(b'\n'),
            1 => Just(b'\r'),
            1 => Just(0u8),
            1 => Just(0xffu8),
        ],
        0..2000,
    )
}

/// Splits `input` at `cuts` (taken modulo its length) into the reads a server would see.
fn reads<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    let mut out = Vec::new();
    for cut in cuts.into_iter().chain([input.len()]) {
        out.push(&input[start..cut]);
        start = cut;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn the_echo_is_specified_prompt_and_bounded(
        input in input(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        extra in 0usize..64,
        prefix in prop_oneof![Just(None), Just(Some("one")), Just(Some("x y"))],
    ) {
        let limit = MIN_OUTPUT + extra;
        let mut framer = Framer::new(prefix);
        let mut sent = Vec::new();
        let mut read_so_far = 0;
        for read in reads(&input, &cuts) {
            let mut rest = read;
            while !rest.is_empty() {
                let mut out = Vec::new();
                let n = framer.feed(rest, &mut out, limit);
                prop_assert!(n > 0, "no progress");
                prop_assert!(out.len() <= limit);
                rest = &rest[n..];
                sent.extend_from_slice(&out);
            }
            read_so_far += read.len();
            // Prompt: whatever was read has been echoed, partial line included.
            prop_assert_eq!(&sent, &expected_echo(&input[..read_so_far], prefix));
        }
        prop_assert_eq!(framer.lines(), count_pieces(&input));
    }

    #[test]
    fn the_identity_echo_counts_lines_like_the_prefixed_one(
        input in input(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let mut identity = Framer::new(None);
        for read in reads(&input, &cuts) {
            identity.pass(read);
        }
        prop_assert_eq!(identity.lines(), count_pieces(&input));
    }

    #[test]
    fn a_read_falls_into_pieces_that_make_it_up(input in input()) {
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
