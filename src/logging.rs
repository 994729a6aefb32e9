//! Logging: `env_logger` set-up and the safe renderings of client bytes used in log lines.
//!
//! Client data reaches the log in two forms, as go-echo printed them: the raw bytes as decimal
//! numbers (`[104 101 108 108 111 10]`) and the text. Both are capped at [`LOG_CAP`] bytes, and
//! the text form escapes control characters and invalid UTF-8, so a client can neither flood the
//! log nor forge a log line. Both are `Display` wrappers: nothing is formatted unless a record is
//! actually written.

use std::fmt::{self, Display, Write as _};
use std::io::Write as _;

/// At most this many bytes of client data are rendered in one log line.
pub const LOG_CAP: usize = 1024;

/// Installs the global logger: `RUST_LOG` filter (default `info`), stderr, one line per record
/// (`2026-11-21T10:00:00.123Z INFO message`).
pub fn init() {
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

/// go-echo's `Received Raw Data` form: `[104 101 108 108 111 10]`, capped.
pub struct RawBytes<'a>(pub &'a [u8]);

impl Display for RawBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(LOG_CAP)];
        f.write_char('[')?;
        // Decimal digits written by hand into a small buffer, 64 bytes at a time: the `fmt`
        // machinery per byte made this record the most expensive part of logging a line.
        let mut buf = [0u8; 64 * 4];
        for (c, chunk) in shown.chunks(64).enumerate() {
            let mut n = 0;
            for (i, &b) in chunk.iter().enumerate() {
                if c + i > 0 {
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
            }
            f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)?;
        }
        f.write_char(']')?;
        more(f, self.0.len() - shown.len())
    }
}

/// go-echo's `Received Data (converted to string)` form: the text without its final line ending,
/// with control characters, `\` and invalid UTF-8 escaped, capped.
pub struct EscapedText<'a>(pub &'a [u8]);

impl Display for EscapedText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.0;
        // The line's own terminator is not part of what the user typed.
        if let Some(rest) = text.strip_suffix(b"\n") {
            text = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        let shown = &text[..text.len().min(LOG_CAP)];
        for chunk in shown.utf8_chunks() {
            // Runs of plain characters are written in one call; only escapes are written apart.
            let valid = chunk.valid();
            let mut plain = 0;
            for (i, c) in valid.char_indices() {
                let escape = match c {
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    '\0' => "\\0",
                    // C0, DEL, C1 and the Unicode line/paragraph separators.
                    c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => "",
                    _ => continue,
                };
                f.write_str(&valid[plain..i])?;
                if escape.is_empty() {
                    write!(f, "\\u{{{:x}}}", c as u32)?;
                } else {
                    f.write_str(escape)?;
                }
                plain = i + c.len_utf8();
            }
            f.write_str(&valid[plain..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        more(f, text.len() - shown.len())
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
    fn raw_bytes_are_capped() {
        let s = RawBytes(&[7u8; 1500]).to_string();
        assert!(s.ends_with("] ... (476 more bytes)"), "{s}");
        let inside = &s[1..s.find(']').unwrap()];
        assert_eq!(inside.split(' ').count(), LOG_CAP);
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
}
