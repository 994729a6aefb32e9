//! Logging: `env_logger` set-up and the safe renderings of client bytes used in log lines.
//!
//! Client data reaches the log in two forms, as go-echo printed them: the raw bytes as decimal
//! numbers (`[104 101 108 108 111 10]`) and the text. Each record shows at most [`LOG_CAP`]
//! bytes of rendered client data, and the text form escapes control characters, invalid UTF-8
//! and invisible formatting characters, so a client can neither flood the log nor forge a log
//! line, nor make one read differently from what it holds. Both are `Display` wrappers: nothing
//! is formatted unless a record is actually written.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;

/// At most this many bytes of rendered client data appear in one log record.
pub(crate) const LOG_CAP: usize = 1024;

/// Installs the global logger: `RUST_LOG` filter (default `info`), stderr, one line per record
/// (`2026-11-21T10:00:00.123Z INFO message`).
pub(crate) fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            writeln!(
                buf,
                "{} {:<5} {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .target(env_logger::Target::Stderr)
        .init();
}

/// go-echo's `Received Raw Data` form: `[104 101 108 108 111 10]`, at most [`LOG_CAP`] bytes of
/// rendered numbers, then how many bytes were left out.
pub(crate) struct RawBytes<'a>(pub &'a [u8]);

impl Display for RawBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('[')?;
        // Decimal digits written by hand into a small buffer, 64 bytes at a time: the `fmt`
        // machinery per byte made this record the most expensive part of logging a line.
        let mut room = LOG_CAP;
        let mut shown = 0;
        let mut buf = [0u8; 64 * 4];
        'chunks: for chunk in self.0.chunks(64) {
            let mut n = 0;
            for &b in chunk {
                let width =
                    1 + usize::from(b >= 10) + usize::from(b >= 100) + usize::from(shown > 0);
                if width > room {
                    f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)?;
                    break 'chunks;
                }
                room -= width;
                if shown > 0 {
                    buf[n] = b' ';
                    n += 1;
                }
                if b >= 100 {
                    buf[n] = b'0' + b / 100;
                    n += 1;
                }
                if b >= 10 {
                    buf[n] = b'0' + b / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + b % 10;
                n += 1;
                shown += 1;
            }
            f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)?;
        }
        f.write_char(']')?;
        more(f, self.0.len() - shown)
    }
}

/// go-echo's `Received Data (converted to string)` form: the text without its final line ending,
/// with control characters, `\`, invalid UTF-8, and the characters that change how text reads
/// without showing (bidirectional controls, zero-width ones) escaped; at most [`LOG_CAP`] bytes
/// of rendered text, then how many bytes were left out.
pub(crate) struct EscapedText<'a>(pub &'a [u8]);

/// How `c` is written in the log: `None` as itself, or its escape.
fn escape(c: char, buf: &mut [u8; 12]) -> Option<&str> {
    let fixed = match c {
        '\\' => "\\\\",
        '\n' => "\\n",
        '\r' => "\\r",
        '\t' => "\\t",
        '\0' => "\\0",
        // C0, DEL, C1, the Unicode line and paragraph separators, the bidirectional
        // embeddings, overrides and isolates, the zero-width characters and marks, and the
        // byte-order mark: each could make a line read differently from what it holds.
        c if c.is_control()
            || matches!(
                c,
                '\u{2028}'
                    | '\u{2029}'
                    | '\u{200B}'..='\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
                    | '\u{FEFF}'
            ) =>
        {
            let mut w = &mut buf[..];
            write!(w, "\\u{{{:x}}}", c as u32).ok()?;
            let len = 12 - w.len();
            return std::str::from_utf8(&buf[..len]).ok();
        }
        _ => return None,
    };
    Some(fixed)
}

impl Display for EscapedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0;
        // The line's own terminator is not part of what the user typed.
        if let Some(rest) = text.strip_suffix(b"\n") {
            text = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        let mut room = LOG_CAP;
        let mut shown = 0;
        let mut buf = [0u8; 12];
        'chunks: for chunk in text.utf8_chunks() {
            // Runs of plain characters are written in one call; only escapes are written apart.
            let valid = chunk.valid();
            let mut plain = 0;
            for (i, c) in valid.char_indices() {
                let escaped = escape(c, &mut buf);
                let width = escaped.map_or(c.len_utf8(), str::len);
                let run = i - plain;
                if run + width > room {
                    f.write_str(&valid[plain..i])?;
                    shown += run;
                    break 'chunks;
                }
                if let Some(e) = escaped {
                    f.write_str(&valid[plain..i])?;
                    f.write_str(e)?;
                    room -= run + width;
                    shown += run + c.len_utf8();
                    plain = i + c.len_utf8();
                }
            }
            let run = valid.len() - plain;
            f.write_str(&valid[plain..])?;
            room -= run;
            shown += run;
            for b in chunk.invalid() {
                if room < 4 {
                    break 'chunks;
                }
                write!(f, "\\x{b:02x}")?;
                room -= 4;
                shown += 1;
            }
        }
        more(f, text.len() - shown)
    }
}

fn more(f: &mut fmt::Formatter<'_>, hidden: usize) -> fmt::Result {
    if hidden > 0 {
        write!(f, " ... ({hidden} more bytes)")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_match_go_echo() {
        assert_eq!(RawBytes(b"hello\n").to_string(), "[104 101 108 108 111 10]");
        assert_eq!(RawBytes(b"").to_string(), "[]");
    }

    #[test]
    fn raw_bytes_are_capped_at_1_kib_of_numbers() {
        let s = RawBytes(&[7u8; 1500]).to_string();
        assert!(s.ends_with("] ... (988 more bytes)"), "{s}");
        let inside = &s[1..s.find(']').unwrap()];
        assert_eq!(inside.split(' ').count(), 512);
        let s = RawBytes(&[255u8; 1500]).to_string();
        let inside = &s[1..s.find(']').unwrap()];
        assert!(inside.len() <= LOG_CAP, "{}", inside.len());
        assert_eq!(inside.split(' ').count(), 256);
        assert!(s.ends_with("] ... (1244 more bytes)"), "{s}");
        assert_eq!(RawBytes(&[1, 22, 255]).to_string(), "[1 22 255]");
    }

    #[test]
    fn text_drops_the_line_ending_only() {
        assert_eq!(EscapedText(b"hello\n").to_string(), "hello");
        assert_eq!(EscapedText(b"hello\r\n").to_string(), "hello");
        assert_eq!(EscapedText(b"a\rb").to_string(), "a\\rb");
    }

    #[test]
    fn text_cannot_forge_a_log_line() {
        let forged = b"x\n2026-01-01T00:00:00Z INFO fake - TCP connection closed.\n";
        let s = EscapedText(forged).to_string();
        assert!(!s.contains('\n') && !s.contains('\r'), "{s}");
        assert!(s.starts_with("x\\n2026"));
    }

    #[test]
    fn text_escapes_control_and_invalid_bytes_but_keeps_unicode() {
        let s = EscapedText(b"\0\x1b[31m\x7f \xff\xfe caf\xc3\xa9 \\").to_string();
        assert_eq!(s, "\\0\\u{1b}[31m\\u{7f} \\xff\\xfe café \\\\");
        assert!(s.chars().all(|c| !c.is_control()));
    }

    #[test]
    fn text_is_capped() {
        let s = EscapedText(&[b'a'; 5000]).to_string();
        assert_eq!(s, format!("{} ... (3976 more bytes)", "a".repeat(LOG_CAP)));
    }

    #[test]
    fn the_cap_holds_for_the_escaped_text() {
        // Each ESC renders as 6 characters, each invalid byte as 4, each bidi override as 8.
        for (input, shown) in [
            (vec![0x1bu8; 2000], 170),
            (vec![0xffu8; 2000], 256),
            ("\u{202E}".repeat(500).into_bytes(), 128),
        ] {
            let s = EscapedText(&input).to_string();
            let (body, tail) = s.split_once(" ... (").expect("capped");
            assert!(body.len() <= LOG_CAP, "{} bytes rendered", body.len());
            let unit = input.len() / if input[0] == 0xe2 { 500 } else { 2000 };
            assert_eq!(tail, format!("{} more bytes)", input.len() - shown * unit));
        }
    }

    #[test]
    fn invisible_formatting_characters_are_escaped() {
        // Right-to-left override, isolates, zero-width space and joiner, BOM.
        let s = EscapedText("a\u{202E}b\u{2066}c\u{2069}d\u{200B}e\u{200D}f\u{FEFF}g".as_bytes())
            .to_string();
        assert_eq!(
            s,
            "a\\u{202e}b\\u{2066}c\\u{2069}d\\u{200b}e\\u{200d}f\\u{feff}g"
        );
        // Letters of right-to-left scripts are text, not controls.
        assert_eq!(EscapedText("שלום".as_bytes()).to_string(), "שלום");
    }
}
