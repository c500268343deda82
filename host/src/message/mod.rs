//! Messages and mail items: what flows through the pipeline.
//!
//! A [`Message`] keeps its header fields as the raw bytes that arrived (folding and all), so a
//! message passes through unchanged except where an agent or the host edits it; values are
//! unfolded only when read. A [`MailItem`] is a message with its envelope and property bag.

pub mod date;
mod mail_item;

pub use mail_item::{Envelope, EnvelopeRecipient, MailItem, Trace};

/// One header field, as raw bytes ending in CRLF.
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

    /// The value: unfolded, with the leading and trailing white space removed.
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
        out.trim().to_string()
    }
}

/// Checks an edit of a header field: a name of printable ASCII without colon, a one-line value.
pub fn check_field(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!(
            "invalid header field name {name:?}: expected printable ASCII without ':' or space"
        ));
    }
    if value.contains(['\r', '\n']) {
        return Err(format!("header field {name}: the value must be one line"));
    }
    Ok(())
}

/// A message: header fields, then the body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    fields: Vec<HeaderField>,
    body: Vec<u8>,
}

impl Message {
    /// Parses raw bytes. Lenient, as an MTA must be: a line without a colon in the header block
    /// ends it (it and the rest become the body).
    pub fn parse(raw: &[u8]) -> Self {
        let mut fields: Vec<HeaderField> = Vec::new();
        let mut pos = 0;
        while pos < raw.len() {
            let end = raw[pos..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(raw.len(), |i| pos + i + 1);
            let line = &raw[pos..end];
            let content = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(line);
            if content.is_empty() {
                pos = end;
                break;
            }
            if matches!(content[0], b' ' | b'\t') {
                if let Some(last) = fields.last_mut() {
                    last.raw.extend_from_slice(content);
                    last.raw.extend_from_slice(b"\r\n");
                    pos = end;
                    continue;
                }
            }
            match content.iter().position(|&b| b == b':') {
                Some(colon)
                    if colon > 0 && content[..colon].iter().all(|&b| (33..=126).contains(&b)) =>
                {
                    let mut raw_field = content.to_vec();
                    raw_field.extend_from_slice(b"\r\n");
                    fields.push(HeaderField {
                        name: String::from_utf8_lossy(&content[..colon]).into_owned(),
                        raw: raw_field,
                    });
                    pos = end;
                }
                _ => break,
            }
        }
        Self {
            fields,
            body: raw[pos.min(raw.len())..].to_vec(),
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
        self.fields.push(HeaderField::new(name, value));
        Ok(())
    }

    /// Puts a field first (trace fields such as Received).
    pub fn prepend_header(&mut self, name: &str, value: &str) {
        self.fields.insert(0, HeaderField::new(name, value));
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
            None => self.fields.push(HeaderField::new(name, value)),
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
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Replaces the body.
    pub fn set_body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    /// The size in bytes of [`to_bytes`](Self::to_bytes).
    pub fn len(&self) -> usize {
        self.fields.iter().map(|f| f.raw.len()).sum::<usize>() + 2 + self.body.len()
    }

    /// Whether every byte of the message is 7-bit ASCII, without copying it.
    pub fn is_ascii(&self) -> bool {
        self.fields.iter().all(|f| f.raw.is_ascii()) && self.body.is_ascii()
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.body.is_empty()
    }

    /// The whole message: fields, blank line, body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }

    /// Appends the whole message to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        for f in &self.fields {
            out.extend_from_slice(&f.raw);
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
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
        m.prepend_header("Received", "from x");
        assert_eq!(m.fields()[0].name(), "Received");
    }

    #[test]
    fn no_header_block() {
        let m = Message::parse(b"just a body line\r\n");
        assert!(m.fields().is_empty());
        assert_eq!(m.body(), b"just a body line\r\n");
    }
}
