//! Client-supplied text (image keys, reasons that quote them, paths) made safe
//! to write into a log line or echo back in an answer.
//!
//! A key is any string a client chose: a `\n` in it would forge a second log
//! line in the text format, an ESC or OSC sequence would drive the terminal of
//! whoever tails the log, and a megabyte-long key would be copied into every
//! line that names it. [`Untrusted`] escapes every control character (and the
//! Unicode bidi overrides that reorder a line as displayed) and caps the
//! length; [`echo_key`] caps a key that goes back to the client.

use std::fmt::{self, Write as _};

/// Most characters of one client string written into a log line.
pub const LOG_TEXT_MAX_CHARS: usize = 256;

/// Most bytes of a key echoed back in an answer: longer keys are invalid
/// anyway (`source::MAX_KEY_BYTES`), so the echo only needs to show which one.
pub const ECHO_KEY_MAX_BYTES: usize = crate::source::MAX_KEY_BYTES;

/// Displays client text escaped and capped for a log line:
/// `tracing::warn!(key = %Untrusted(&key), ...)`.
#[derive(Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shown, (i, c)) in self.0.char_indices().enumerate() {
            if shown == LOG_TEXT_MAX_CHARS {
                return write!(f, "…[{} more bytes]", self.0.len() - i);
            }
            if needs_escape(c) {
                // `\n`, `\u{1b}`, `\u{202e}`: readable and inert.
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Control characters, and format characters that change how the rest of a
/// line is displayed (bidi overrides and isolates, zero-width joiners).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A key as echoed back to the client: unchanged up to
/// [`ECHO_KEY_MAX_BYTES`], else cut there (on a character boundary) and
/// marked with `…`, so an answer never grows with a hostile key's length.
pub fn echo_key(key: &str) -> String {
    if key.len() <= ECHO_KEY_MAX_BYTES {
        return key.to_owned();
    }
    let mut end = ECHO_KEY_MAX_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let forged = "a.jpg\n2026-01-01T00:00:00Z  INFO ongi: forged\x1b]0;pwned\x07\x1b[31m";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("a.jpg\\n2026"), "{shown}");
        assert!(shown.contains("\\u{1b}]0;pwned\\u{7}"), "{shown}");
        assert_eq!(Untrusted("\u{202e}gpj.exe").to_string(), "\\u{202e}gpj.exe");
        // a backslash is escaped too, so `\n` in the output always means an escaped newline
        assert_eq!(Untrusted("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(Untrusted("사진/바다.jpg").to_string(), "사진/바다.jpg");
        assert_eq!(format!("{:?}", Untrusted("x\ty")), "\"x\\ty\"");
    }

    #[test]
    fn long_text_is_capped() {
        let long = "é".repeat(10_000);
        let shown = Untrusted(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(LOG_TEXT_MAX_CHARS)));
        assert!(
            shown.ends_with(&format!(
                "…[{} more bytes]",
                2 * (10_000 - LOG_TEXT_MAX_CHARS)
            )),
            "{shown}"
        );
        let exact = "x".repeat(LOG_TEXT_MAX_CHARS);
        assert_eq!(Untrusted(&exact).to_string(), exact);
    }

    #[test]
    fn echoed_keys_are_capped_on_a_char_boundary() {
        assert_eq!(echo_key("a.jpg"), "a.jpg");
        let max = "k".repeat(ECHO_KEY_MAX_BYTES);
        assert_eq!(echo_key(&max), max);
        let long = "가".repeat(ECHO_KEY_MAX_BYTES);
        let echoed = echo_key(&long);
        assert!(echoed.ends_with('…'));
        assert!(echoed.len() <= ECHO_KEY_MAX_BYTES + '…'.len_utf8());
        assert!(long.starts_with(echoed.trim_end_matches('…')));
    }
}
