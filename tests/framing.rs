//! Property: for arbitrary bytes, arbitrary split points and arbitrary `--max-line`, the framer's
//! output is the specified echo (prefix once per line start, long lines in pieces, the final
//! partial line at EOF), and it never holds more than `max_line` bytes.

use proptest::prelude::*;
use tcp_echo::echo::{expected_echo, Framer};

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

fn run(input: &[u8], cuts: &[usize], prefix: Option<&str>, max_line: usize) -> Vec<u8> {
    let mut framer = Framer::new(prefix, max_line);
    let mut out = Vec::new();
    let mut pieces = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts.into_iter().chain([input.len()]) {
        framer.feed(&input[start..cut.max(start)], &mut out, |p| {
            pieces.push(p.bytes.to_vec())
        });
        start = cut.max(start);
        assert!(framer.pending_len() <= max_line);
    }
    framer.finish(&mut out, |p| pieces.push(p.bytes.to_vec()));
    // The observer sees exactly the input, piece by piece.
    assert_eq!(pieces.concat(), input);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn output_is_the_specified_echo(
        input in input(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
        max_line in 1usize..300,
        prefix in prop_oneof![Just(None), Just(Some("one")), Just(Some("x y"))],
    ) {
        let out = run(&input, &cuts, prefix, max_line);
        prop_assert_eq!(out, expected_echo(&input, prefix));
    }

    #[test]
    fn bytes_leave_as_soon_as_a_line_or_max_line_allows(
        input in input(),
        max_line in 1usize..64,
    ) {
        // Fed in one go, everything except a trailing partial line of under max_line bytes
        // has been sent before finish().
        let mut framer = Framer::new(None, max_line);
        let mut out = Vec::new();
        framer.feed(&input, &mut out, |_| {});
        let tail = input.len() - input.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        prop_assert_eq!(out.len(), input.len() - tail % max_line);
    }
}
