//! One log record, one line: control characters inside a record are escaped at the writer,
//! the one place every formatted record (text or JSON) passes through, so a model name, id or
//! error text holding a newline cannot forge log lines, whichever field or message carries it.
//!
//! `tracing-subscriber`'s fmt layers format a whole record into a buffer and hand it to the
//! writer in one `write_all`; the record's own final newline is kept, every other control
//! character becomes `\n`, `\r`, `\t` or `\u{..}`. JSON records are unchanged (serde_json
//! already escapes controls). Terminal colours (`\x1b`) are kept only when the layer writes
//! them itself (a terminal, never a file).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, Write};

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

/// Wraps a `MakeWriter` so that every record it writes is escaped.
#[derive(Clone)]
pub(crate) struct Escaping<M> {
    inner: M,
    keep_ansi: bool,
}

impl<M> Escaping<M> {
    /// `keep_ansi`: the layer colours its output, so `\x1b` stays as it is.
    pub(crate) fn new(inner: M, keep_ansi: bool) -> Self {
        Escaping { inner, keep_ansi }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer(),
            keep_ansi: self.keep_ansi,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        EscapingWriter {
            inner: self.inner.make_writer_for(meta),
            keep_ansi: self.keep_ansi,
        }
    }
}

pub(crate) struct EscapingWriter<W> {
    inner: W,
    keep_ansi: bool,
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape_record(buf, self.keep_ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `record` with its control characters escaped, except one final newline (and `\x1b` with
/// `keep_ansi`). Borrowed when there is nothing to escape (the common case).
pub(crate) fn escape_record(record: &[u8], keep_ansi: bool) -> Cow<'_, [u8]> {
    let (body, end) = match record.strip_suffix(b"\n") {
        Some(body) => (body, "\n"),
        None => (record, ""),
    };
    let escaped = |c: char| c.is_control() && !(keep_ansi && c == '\x1b');
    let text = String::from_utf8_lossy(body);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(record);
    }
    let mut out = String::with_capacity(record.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if escaped(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push_str(end);
    Cow::Owned(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str, ansi: bool) -> String {
        String::from_utf8(escape_record(s.as_bytes(), ansi).into_owned()).unwrap()
    }

    #[test]
    fn a_record_stays_one_line() {
        assert_eq!(esc("loaded 'm'\n", false), "loaded 'm'\n");
        assert!(matches!(escape_record(b"plain\n", false), Cow::Borrowed(_)));
        assert_eq!(
            esc("failed to load 'x\nE1205 forged'\n", false),
            "failed to load 'x\\nE1205 forged'\n"
        );
        assert_eq!(
            esc("a\rb\tc\u{0}d\u{85}e", false),
            "a\\rb\\tc\\u{0}d\\u{85}e"
        );
        assert_eq!(esc("\x1b[1mbold\x1b[0m\n", true), "\x1b[1mbold\x1b[0m\n");
        assert_eq!(esc("\x1b[1m\n", false), "\\u{1b}[1m\n");
        // Only the last newline ends the record.
        assert_eq!(esc("a\n\n", false), "a\\n\n");
    }

    #[test]
    fn the_writer_escapes_what_it_is_given() {
        let mut out = Vec::new();
        let mut w = EscapingWriter {
            inner: &mut out,
            keep_ansi: false,
        };
        w.write_all(b"model 'a\nb' failed\n").unwrap();
        assert_eq!(out, b"model 'a\\nb' failed\n");
    }
}
