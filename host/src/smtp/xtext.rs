//! xtext (RFC 3461 section 4): how ENVID, ORCPT and XCLIENT values travel in a command line.
//!
//! A value is kept decoded inside the host and encoded again each time it is written into a
//! command, so that nothing a client sent is ever written raw into another protocol line.

/// Why an xtext value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    /// A character that xtext does not allow (outside `!` to `~`, or `=`).
    #[error("character {0:?} is not allowed in xtext")]
    Character(char),
    /// `+` not followed by two hexadecimal digits.
    #[error("'+' must be followed by two hexadecimal digits")]
    Escape,
    /// The decoded bytes are not UTF-8.
    #[error("the decoded value is not UTF-8")]
    Utf8,
}

/// Encodes `value`: printable ASCII other than `+` and `=` stays, every other byte is `+XX`.
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes an xtext value. Hexadecimal digits may be lower case (RFC 3461 asks for upper case
/// from senders; receivers are lenient).
pub fn decode(text: &str) -> Result<String, XtextError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(XtextError::Escape)?;
                let hex = std::str::from_utf8(hex).map_err(|_| XtextError::Escape)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| XtextError::Escape)?);
                i += 3;
            }
            b'!'..=b'~' if b != b'=' => {
                out.push(b);
                i += 1;
            }
            _ => {
                let c = text[i..].chars().next().unwrap_or('?');
                return Err(XtextError::Character(c));
            }
        }
    }
    String::from_utf8(out).map_err(|_| XtextError::Utf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_and_decode_are_inverse() {
        let table = [
            ("plain", "plain"),
            ("a+b=c", "a+2Bb+3Dc"),
            ("with space", "with+20space"),
            ("x\r\nRCPT", "x+0D+0ARCPT"),
            ("caf\u{e9}", "caf+C3+A9"),
            ("", ""),
        ];
        for (value, encoded) in table {
            assert_eq!(encode(value), encoded);
            assert_eq!(decode(encoded).as_deref(), Ok(value));
        }
        assert_eq!(decode("a+2bb").as_deref(), Ok("a+b"));
    }

    #[test]
    fn malformed_xtext_is_refused() {
        assert_eq!(decode("a+1"), Err(XtextError::Escape));
        assert_eq!(decode("a+zz"), Err(XtextError::Escape));
        assert_eq!(decode("a=b"), Err(XtextError::Character('=')));
        assert_eq!(decode("a b"), Err(XtextError::Character(' ')));
        assert_eq!(decode("\u{e9}"), Err(XtextError::Character('\u{e9}')));
        assert_eq!(decode("+FF"), Err(XtextError::Utf8));
    }
}
