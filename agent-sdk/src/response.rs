//! SMTP responses: a reply code, an enhanced status code and text, each validated.

use std::fmt;

/// An SMTP response an agent asks the host to send, such as `550 5.7.1 Relaying denied`.
///
/// Both codes are checked when the response is built: the reply code is three digits with a first
/// digit of 2 to 5 and a second of 0 to 5 (RFC 5321 §4.2); the enhanced status code is
/// `class.subject.detail` (RFC 3463) whose class equals the reply code's first digit. A 3xx reply
/// has no enhanced code. The text may hold several lines (separated by `\n`) of at most 500
/// bytes and no other control character than TAB.
///
/// Text that comes from outside (a remote server's reply, an error message, a file) goes through
/// [`SmtpResponse::sanitized`], which never fails.
///
/// ```
/// use mta_agent_sdk::SmtpResponse;
///
/// let response = SmtpResponse::new(550, "5.7.1", "Relaying denied").unwrap();
/// assert_eq!(response.to_string(), "550 5.7.1 Relaying denied");
/// assert!(SmtpResponse::new(550, "4.7.1", "class differs").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SmtpResponse {
    code: u16,
    enhanced: String,
    text: String,
}

/// Why an [`SmtpResponse`] was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidResponse(String);

impl fmt::Display for InvalidResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidResponse {}

/// The longest text line we accept: a reply line is at most 512 octets with code and CRLF.
const MAX_LINE: usize = 500;

impl SmtpResponse {
    /// Builds a response, validating both codes and the text.
    pub fn new(
        code: u16,
        enhanced: impl Into<String>,
        text: impl Into<String>,
    ) -> Result<Self, InvalidResponse> {
        let enhanced = enhanced.into();
        let text = text.into();
        let digits = [code / 100, code / 10 % 10];
        if !(200..=599).contains(&code) || digits[1] > 5 {
            return Err(InvalidResponse(format!(
                "reply code {code} is not valid: expected three digits 2xx to 5xx with a second digit of 0 to 5"
            )));
        }
        let class = digits[0];
        if class == 3 {
            if !enhanced.is_empty() {
                return Err(InvalidResponse(format!(
                    "a {code} reply carries no enhanced status code, found {enhanced:?}"
                )));
            }
        } else {
            validate_enhanced(class, &enhanced)?;
        }
        if text.contains('\r') {
            return Err(InvalidResponse("response text must not contain CR".into()));
        }
        if let Some(c) = text.chars().find(|&c| is_forbidden(c)) {
            return Err(InvalidResponse(format!(
                "response text must not contain the control character {c:?}"
            )));
        }
        if let Some(line) = text.split('\n').find(|line| line.len() > MAX_LINE) {
            return Err(InvalidResponse(format!(
                "response line of {} characters is over the limit of {MAX_LINE}",
                line.len()
            )));
        }
        Ok(Self {
            code,
            enhanced,
            text,
        })
    }

    /// Builds a response from anything, never failing: the form to use for text that came from
    /// outside (a remote server, an agent's error, a file, a DNS name).
    ///
    /// An invalid reply code becomes 451 (554 for a 5xx class), an enhanced code that is not
    /// valid for the class becomes `class.0.0`, control characters become spaces, lines are cut
    /// at 500 bytes (on a character boundary) and at most [`MAX_LINES`](Self::MAX_LINES) lines
    /// are kept.
    ///
    /// ```
    /// use mta_agent_sdk::SmtpResponse;
    ///
    /// let r = SmtpResponse::sanitized(550, "4.1.1", "no such\r\nuser\u{0}here");
    /// assert_eq!(r.to_string(), "550 5.0.0 no such / user here");
    /// assert_eq!(SmtpResponse::sanitized(999, "", "odd").code(), 451);
    /// ```
    pub fn sanitized(code: u16, enhanced: &str, text: &str) -> Self {
        let code = match (code / 100, code / 10 % 10) {
            (2..=5, 0..=5) => code,
            (5, _) => 554,
            _ => 451,
        };
        let class = code / 100;
        let enhanced = if class == 3 {
            String::new()
        } else if validate_enhanced(class, enhanced).is_ok() {
            enhanced.to_string()
        } else {
            format!("{class}.0.0")
        };
        let mut lines: Vec<String> = Vec::new();
        for line in text.split('\n').take(Self::MAX_LINES) {
            let mut clean = String::with_capacity(line.len().min(MAX_LINE));
            for c in line.chars() {
                if c == '\r' {
                    continue;
                }
                let c = if is_forbidden(c) || c == '\t' { ' ' } else { c };
                if clean.len() + c.len_utf8() > MAX_LINE {
                    break;
                }
                clean.push(c);
            }
            lines.push(clean.trim_end().to_string());
        }
        while lines.len() > 1 && lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        Self {
            code,
            enhanced,
            text: lines.join("\n"),
        }
    }

    /// The most lines [`sanitized`](Self::sanitized) keeps.
    pub const MAX_LINES: usize = 20;

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code (`5.7.1`), empty for 3xx replies.
    pub fn enhanced_code(&self) -> &str {
        &self.enhanced
    }

    /// The text, lines separated by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this is a 4xx reply: the sender should try again later.
    pub fn is_transient(&self) -> bool {
        self.code / 100 == 4
    }

    /// Whether this is a 5xx reply: the sender should not try again.
    pub fn is_permanent(&self) -> bool {
        self.code / 100 == 5
    }

    /// Whether this is a 2xx reply.
    pub fn is_success(&self) -> bool {
        self.code / 100 == 2
    }

    /// The response as sent on the wire, every line ending in CRLF (`250-…` continuation lines).
    pub fn to_wire(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 16);
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(sep);
            if !self.enhanced.is_empty() {
                out.push_str(&self.enhanced);
                out.push(' ');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }
}

/// Control characters a reply line may not carry (TAB and the line separator LF excepted).
fn is_forbidden(c: char) -> bool {
    c.is_control() && c != '\t' && c != '\n'
}

fn validate_enhanced(class: u16, enhanced: &str) -> Result<(), InvalidResponse> {
    let invalid = || {
        InvalidResponse(format!(
            "enhanced status code {enhanced:?} is not valid: expected {class}.subject.detail with subject and detail of 1 to 3 digits (RFC 3463)"
        ))
    };
    let mut parts = enhanced.split('.');
    let (Some(c), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let number = |s: &str| {
        (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with("00")
    };
    if c != class.to_string() || !number(subject) || !number(detail) {
        return Err(invalid());
    }
    Ok(())
}

impl fmt::Display for SmtpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.enhanced.is_empty() {
            write!(f, " {}", self.enhanced)?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text.replace('\n', " / "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_validated() {
        let table: &[(u16, &str, bool)] = &[
            (250, "2.0.0", true),
            (451, "4.3.0", true),
            (550, "5.1.1", true),
            (554, "5.7.123", true),
            (354, "", true),
            (354, "3.0.0", false),
            (550, "4.1.1", false),
            (550, "5.1", false),
            (550, "5.1.1.1", false),
            (550, "5.x.1", false),
            (550, "5.1234.1", false),
            (550, "", false),
            (199, "1.0.0", false),
            (600, "6.0.0", false),
            (561, "5.0.0", false),
        ];
        for &(code, enhanced, ok) in table {
            assert_eq!(
                SmtpResponse::new(code, enhanced, "text").is_ok(),
                ok,
                "{code} {enhanced}"
            );
        }
    }

    #[test]
    fn text_is_checked_and_multiline_goes_to_the_wire() {
        assert!(SmtpResponse::new(550, "5.7.1", "a\rb").is_err());
        assert!(SmtpResponse::new(550, "5.7.1", "x".repeat(501)).is_err());
        assert!(SmtpResponse::new(550, "5.7.1", "nul\0").is_err());
        assert!(SmtpResponse::new(550, "5.7.1", "tab\tok").is_ok());
        let response = SmtpResponse::new(550, "5.7.1", "first\nsecond").unwrap();
        assert_eq!(
            response.to_wire(),
            "550-5.7.1 first\r\n550 5.7.1 second\r\n"
        );
    }

    #[test]
    fn sanitized_never_fails_and_always_gives_a_valid_response() {
        let long = "é".repeat(400);
        let many = "line\n".repeat(100);
        let table: &[(u16, &str, &str)] = &[
            (550, "5.1.1", "fine"),
            (550, "4.1.1", "class differs"),
            (999, "9.9.9", "bad code"),
            (561, "5.6.1", "bad second digit"),
            (354, "3.0.0", "go ahead"),
            (250, "", "no enhanced code"),
            (421, "4.4.2", "a\r\nb\u{1b}[31mred\u{7f}"),
            (550, "5.7.1", &long),
            (451, "4.3.0", &many),
            (0, "", ""),
        ];
        for &(code, enhanced, text) in table {
            let r = SmtpResponse::sanitized(code, enhanced, text);
            let again = SmtpResponse::new(r.code(), r.enhanced_code(), r.text());
            assert_eq!(again.as_ref(), Ok(&r), "{code} {enhanced} {text:?}");
            assert!(r.text().split('\n').count() <= SmtpResponse::MAX_LINES);
            assert!(r
                .to_wire()
                .split("\r\n")
                .all(|l| !l.contains(['\r', '\n']) && l.len() <= 512));
        }
        assert_eq!(SmtpResponse::sanitized(561, "5.6.1", "x").code(), 554);
        assert_eq!(
            SmtpResponse::sanitized(550, "5.7.1", &long).text().len(),
            500
        );
    }
}
