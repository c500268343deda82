//! Messages and mail items: what flows through the pipeline.
//!
//! A [`Message`] keeps its header fields, the blank line after them and the body as the exact
//! bytes that arrived (folding, bare LF or CR and all), so a message passes every hop byte for
//! byte except where an agent or the host edits it; values are unfolded only when read. A
//! [`MailItem`] is a message with its envelope and property bag.

pub mod body;
pub mod date;
pub mod file;
mod mail_item;
pub mod parameters;

pub use body::MessageBody;
pub use mail_item::{Envelope, EnvelopeRecipient, LastAttempt, MailItem, Trace};

/// Turns LF line endings into CRLF across pieces of a stream: like [`to_crlf`], with the last
/// byte of the previous piece remembered.
#[derive(Debug, Default)]
pub struct CrlfStream {
    previous: u8,
}

impl CrlfStream {
    /// Appends `bytes` to `out`, every bare LF made CRLF.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.reserve(bytes.len() + bytes.len() / 32);
        for &b in bytes {
            if b == b'\n' && self.previous != b'\r' {
                out.push(b'\r');
            }
            out.push(b);
            self.previous = b;
        }
    }
}

/// `bytes` with every bare LF made CRLF: files on disk (Maildir, pickup) have LF line endings,
/// SMTP has CRLF, and a bare LF must not reach a next hop (some end the data at LF "." LF).
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for &b in bytes {
        if b == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        previous = b;
    }
    out
}

/// A new Message-ID (`<nanoseconds.pid.counter@hostname>`), unique on this host.
pub fn new_message_id(hostname: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let hostname: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        .collect();
    format!(
        "<{}.{}.{}@{}>",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        if hostname.is_empty() {
            "localhost".into()
        } else {
            hostname
        }
    )
}

/// One header field, as the raw bytes of its lines (with their own line endings; a field the
/// host writes ends in CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    name: String,
    raw: Vec<u8>,
}

impl HeaderField {
    /// A new field `Name: value`.
    pub fn new(name: &str, value: &str) -> Self {
        Self {
            name: name.to_string(),
            raw: format!("{name}: {value}\r\n").into_bytes(),
        }
    }

    /// The field name, as written.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value: unfolded, other control characters turned into spaces, with the leading and
    /// trailing white space removed.
    pub fn value(&self) -> String {
        let raw = String::from_utf8_lossy(&self.raw);
        let after_colon = raw.split_once(':').map_or("", |(_, v)| v);
        let mut out = String::with_capacity(after_colon.len());
        for (i, line) in after_colon.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if i > 0 && !line.is_empty() {
                out.push(' ');
            }
            out.push_str(line.trim_matches([' ', '\t']));
        }
        out.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
            .trim()
            .to_string()
    }

    /// The raw bytes of the field, line endings included.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// Checks an edit of a header field: a name of printable ASCII without colon, a one-line value
/// without control characters (TAB excepted).
pub fn check_field(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!(
            "invalid header field name {name:?}: expected printable ASCII without ':' or space"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("header field {name}: the value must be one line"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "header field {name}: the value must not contain control characters"
        ));
    }
    Ok(())
}

/// A message: header fields, the blank line that ends them, then the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    fields: Vec<HeaderField>,
    /// The empty line after the header block as it came (`CRLF`, `LF`), or nothing when the
    /// header block ended otherwise (at a line that is not a field, or at the end).
    separator: Vec<u8>,
    body: MessageBody,
}

/// Where the body of a message arriving piece by piece starts: `Some(offset)` once the header
/// block in `head` is known to have ended (as [`Message::parse`] would end it), `None` while
/// more is needed.
pub fn header_end(head: &[u8]) -> Option<usize> {
    scan(head, true).map(|(_, _, at)| at)
}

/// The header block of `raw`: its fields, its separator and where the body starts. With
/// `partial`, `raw` is the beginning of a message: `None` when it ends before the block does.
fn scan(raw: &[u8], partial: bool) -> Option<(Vec<HeaderField>, Vec<u8>, usize)> {
    let mut fields: Vec<HeaderField> = Vec::new();
    let mut separator = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let end = match memchr::memchr(b'\n', &raw[pos..]) {
            Some(i) => pos + i + 1,
            None if partial => return None,
            None => raw.len(),
        };
        let line = &raw[pos..end];
        // A line that starts with space or tab continues the last field, and the last field
        // may go on until the next line is seen.
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if content.is_empty() {
            separator = line.to_vec();
            pos = end;
            return Some((fields, separator, pos));
        }
        if matches!(content[0], b' ' | b'\t') {
            if let Some(last) = fields.last_mut() {
                last.raw.extend_from_slice(line);
                pos = end;
                continue;
            }
        }
        match content.iter().position(|&b| b == b':') {
            Some(colon)
                if colon > 0 && content[..colon].iter().all(|&b| (33..=126).contains(&b)) =>
            {
                fields.push(HeaderField {
                    name: String::from_utf8_lossy(&content[..colon]).into_owned(),
                    raw: line.to_vec(),
                });
                pos = end;
            }
            _ => return Some((fields, separator, pos)),
        }
    }
    if partial {
        return None;
    }
    Some((fields, separator, pos))
}

impl Message {
    /// Parses raw bytes, keeping them all. Lenient, as an MTA must be: a line that is not a
    /// field ends the header block (it and the rest become the body).
    pub fn parse(raw: &[u8]) -> Self {
        let (fields, separator, pos) = scan(raw, false).unwrap_or_default();
        Self {
            fields,
            separator,
            body: raw[pos.min(raw.len())..].to_vec().into(),
        }
    }

    /// A message from its header block (`head`, up to [`header_end`]) and its body.
    pub fn with_body(head: &[u8], body: MessageBody) -> Self {
        let mut message = Self::parse(head);
        let rest = std::mem::take(&mut message.body);
        if rest.is_empty() {
            message.body = body;
        } else {
            // `head` held more than the header block: keep it all, in order.
            let mut bytes = rest.in_memory().unwrap_or_default().to_vec();
            if let Ok(tail) = body.to_vec() {
                bytes.extend_from_slice(&tail);
            }
            message.body = bytes.into();
        }
        message
    }

    /// Before a field is added: the last field must end its line, and a message that had no
    /// header block gets the blank line that separates one from the body.
    fn make_room(&mut self) {
        if let Some(last) = self.fields.last_mut() {
            if !last.raw.ends_with(b"\n") {
                last.raw.extend_from_slice(b"\r\n");
            }
        } else if self.separator.is_empty() && !self.body.is_empty() {
            self.separator = b"\r\n".to_vec();
        }
    }

    /// The header fields, in order.
    pub fn fields(&self) -> &[HeaderField] {
        &self.fields
    }

    /// The first value of a field (names compare ignoring case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(HeaderField::value)
    }

    /// How many fields of this name.
    pub fn count(&self, name: &str) -> usize {
        self.fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// Appends a field at the end of the header block.
    pub fn add_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_field(name, value)?;
        self.make_room();
        self.fields.push(HeaderField::new(name, value));
        Ok(())
    }

    /// Puts a field first (trace fields such as Received). The value is the host's own: it is
    /// checked like an agent's edit, and a value that fails the check is not written.
    pub fn prepend_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_field(name, value)?;
        self.make_room();
        self.fields.insert(0, HeaderField::new(name, value));
        Ok(())
    }

    /// Replaces the first field of this name, removes the others; appends if there is none.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        check_field(name, value)?;
        match self
            .fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.fields[first] = HeaderField::new(name, value);
                let mut i = 0;
                self.fields.retain(|f| {
                    i += 1;
                    i - 1 == first || !f.name.eq_ignore_ascii_case(name)
                });
            }
            None => {
                self.make_room();
                self.fields.push(HeaderField::new(name, value));
            }
        }
        Ok(())
    }

    /// Removes every field of this name; returns how many.
    pub fn remove_header(&mut self, name: &str) -> usize {
        let before = self.fields.len();
        self.fields.retain(|f| !f.name.eq_ignore_ascii_case(name));
        before - self.fields.len()
    }

    /// The body.
    pub fn body(&self) -> &MessageBody {
        &self.body
    }

    /// Takes the body out, leaving an empty one (to hand the header block alone to agents).
    pub fn take_body(&mut self) -> MessageBody {
        std::mem::take(&mut self.body)
    }

    /// Replaces the body with these bytes.
    pub fn set_body(&mut self, body: Vec<u8>) {
        self.set_content(body.into());
    }

    /// Replaces the body.
    pub fn set_content(&mut self, body: MessageBody) {
        self.body = body;
        if self.separator.is_empty() && !self.body.is_empty() {
            if let Some(last) = self.fields.last_mut() {
                if !last.raw.ends_with(b"\n") {
                    last.raw.extend_from_slice(b"\r\n");
                }
            }
            self.separator = b"\r\n".to_vec();
        }
    }

    /// The header block alone, as bytes (for a report that carries headers only).
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
        out
    }

    /// The header block and its separator: the message up to its body.
    pub fn head(&self) -> Vec<u8> {
        let mut out = self.header_bytes();
        out.extend_from_slice(&self.separator);
        out
    }

    /// The size in bytes of the whole message.
    pub fn len(&self) -> usize {
        self.fields.iter().map(|f| f.raw.len()).sum::<usize>()
            + self.separator.len()
            + self.body.len() as usize
    }

    /// The bytes it holds in memory (a spooled body is on disk).
    pub fn memory_len(&self) -> usize {
        self.fields.iter().map(|f| f.raw.len()).sum::<usize>()
            + self.separator.len()
            + self.body.memory_len()
    }

    /// Whether every byte of the message is 7-bit ASCII, without copying it.
    pub fn is_ascii(&self) -> bool {
        self.fields.iter().all(|f| f.raw.is_ascii()) && self.body.is_ascii()
    }

    /// Whether the message has the blank line that ends a header block.
    pub fn has_separator(&self) -> bool {
        !self.separator.is_empty()
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.body.is_empty()
    }

    /// The whole message in memory: fields, blank line, body. Blocking when the body is
    /// spooled (it is read back).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut out = self.head();
        out.reserve(self.body.len() as usize);
        self.body.for_each_chunk(|c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        Ok(out)
    }

    /// Writes the whole message to `out`, a piece at a time. Blocking.
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.head())?;
        self.body.for_each_chunk(|c| out.write_all(c))
    }

    /// The whole message for a test (panics on a read error).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_vec().expect("the body reads back")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_bytes_and_unfolds_values() {
        let raw = b"Subject: a\r\n  folded\r\nX-A: 1\r\n\r\nbody\r\n.. line\r\n";
        let m = Message::parse(raw);
        assert_eq!(m.header("subject").as_deref(), Some("a folded"));
        assert_eq!(m.to_bytes(), raw);
        assert_eq!(m.len(), raw.len());
    }

    #[test]
    fn edits() {
        let mut m = Message::parse(b"A: 1\r\nB: 2\r\nA: 3\r\n\r\nx");
        m.set_header("a", "9").unwrap();
        assert_eq!(m.to_bytes(), b"a: 9\r\nB: 2\r\n\r\nx");
        assert_eq!(m.remove_header("B"), 1);
        assert!(m.add_header("Bad Name", "x").is_err());
        assert!(m.add_header("X", "a\r\nInjected: yes").is_err());
        m.prepend_header("Received", "from x").unwrap();
        assert_eq!(m.fields()[0].name(), "Received");
        assert!(m.prepend_header("Received", "from x\r\nBcc: y").is_err());
    }

    #[test]
    fn files_get_crlf_line_endings() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n");
        assert_eq!(to_crlf(b""), b"");
    }

    #[test]
    fn no_header_block() {
        let mut m = Message::parse(b"just a body line\r\n");
        assert!(m.fields().is_empty());
        assert_eq!(m.body().in_memory().unwrap(), b"just a body line\r\n");
        assert_eq!(m.to_bytes(), b"just a body line\r\n");
        m.prepend_header("Received", "x").unwrap();
        assert_eq!(m.to_bytes(), b"Received: x\r\n\r\njust a body line\r\n");
    }

    #[test]
    fn the_header_end_found_piece_by_piece_is_where_parse_puts_the_body() {
        let table: &[&[u8]] = &[
            b"A: 1\r\nB: 2\r\n\r\nbody\r\n",
            b"A: 1\n folded\n\nbody",
            b"A: 1\r\nnot a field\r\nB: 2\r\n",
            b"just a body\r\n",
            b"\r\nonly a body",
            b" starts folded\r\n\r\n",
        ];
        for raw in table {
            let whole = Message::parse(raw);
            let at = (0..=raw.len())
                .find_map(|n| header_end(&raw[..n]))
                .expect("found before the end");
            let head = &raw[..at];
            let rebuilt = Message::with_body(head, raw[at..].to_vec().into());
            assert_eq!(rebuilt, whole, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(header_end(b"A: 1\r\nB: 2"), None, "the line may go on");
        assert_eq!(header_end(b"A: 1\r\n"), None, "the next line may fold");
    }

    #[test]
    fn crlf_streams_like_the_whole() {
        let raw = b"a\nb\r\nc\rd\n\n";
        for cut in 0..raw.len() {
            let mut s = CrlfStream::default();
            let mut out = Vec::new();
            s.push(&raw[..cut], &mut out);
            s.push(&raw[cut..], &mut out);
            assert_eq!(out, to_crlf(raw), "cut at {cut}");
        }
    }

    #[test]
    fn every_byte_survives_a_parse() {
        let table: &[&[u8]] = &[
            b"A: 1\nB: 2\n\nbody\n",
            b"A: 1\r\n folded\n\r\nbody",
            b"A: 1\r\nnot a field\r\nB: 2\r\n",
            b"A: 1\rB: 2\r\n\r\n\x00\r\r\n",
            b"A: no newline at the end",
            b"",
            b"\r\n",
        ];
        for raw in table {
            let m = Message::parse(raw);
            assert_eq!(m.to_bytes(), *raw, "{:?}", String::from_utf8_lossy(raw));
            assert_eq!(m.len(), raw.len());
        }
        let mut m = Message::parse(b"A: no newline at the end");
        m.add_header("B", "2").unwrap();
        assert_eq!(m.to_bytes(), b"A: no newline at the end\r\nB: 2\r\n");
        assert_eq!(
            Message::parse(b"A: x\ry\r\n\r\n").header("a").unwrap(),
            "x y"
        );
    }
}
