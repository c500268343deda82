//! Log output that a client cannot forge. Values in log events come from clients (a HELO name,
//! an AUTH user name, an address), files (a pickup file's name) and agents (their error
//! messages); one holding a line break would write a false, well-formed log line. Whatever the
//! field and however it is formatted, every event goes through [`Escaping`], which writes
//! control characters as escapes: an event is one line.

use std::io::{self, Write};

/// Writes each event with its control characters escaped (`\n`, `\r`, `\xNN`), keeping the
/// newline that ends it; the escape character stays when colours are on.
pub struct Escaping<W> {
    inner: W,
    ansi: bool,
}

impl<W: Write> Escaping<W> {
    /// Wraps `inner`; `ansi` keeps ESC for colour codes.
    pub fn new(inner: W, ansi: bool) -> Self {
        Self { inner, ansi }
    }
}

/// `event` with control characters escaped, but its final newline.
pub fn escape(event: &[u8], ansi: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len() + 8);
    let last = event.len().saturating_sub(1);
    for (i, &b) in event.iter().enumerate() {
        match b {
            b'\n' if i == last => out.push(b),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b),
            0x1b if ansi => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out
}

impl<W: Write> Write for Escaping<W> {
    /// One call is one event (the formatter writes each whole).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sets up logging to standard error: `MTA_LOG` filters (default `info`).
///
/// As text: colours on a terminal, every event escaped. As JSON (for journald and log
/// shippers): one object per line, from tracing-subscriber's JSON formatter, whose string
/// escaping already keeps an event on one line; the event's fields are under `fields`, the
/// session or mail item spans it ran in under `spans`.
pub fn init(format: crate::config::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MTA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    if format == crate::config::LogFormat::Json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(move || Escaping::new(std::io::stderr(), ansi))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_line_whatever_its_values_hold() {
        assert_eq!(
            escape(b"user=\"a\nINFO forged\r\" x\x00\x1b[31m\n", false),
            b"user=\"a\\nINFO forged\\r\" x\\x00\\x1b[31m\n"
        );
        assert_eq!(
            escape(b"\x1b[31mred\x1b[0m\n", true),
            b"\x1b[31mred\x1b[0m\n"
        );
        assert_eq!(escape(b"tab\there\n", false), b"tab\there\n");
    }
}
