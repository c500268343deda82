//! The envelope's ESMTP parameters as values: BODY, RET, ENVID (MAIL) and NOTIFY, ORCPT (RCPT).
//!
//! They are parsed once, when they enter (an SMTP command, a replay file), kept decoded, and
//! written again with [`Display`](std::fmt::Display) for logs and agents or with the `*_xtext`
//! forms for the wire: nothing a client sent is copied into another protocol line as it came.
//! In queue files they keep the textual forms of earlier versions (`"FAILURE,DELAY"`,
//! `"rfc822;addr"`), so queued items survive an upgrade.

use crate::smtp::xtext;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a decoded DSN value is printable US-ASCII, as RFC 3461 requires of ENVID and ORCPT.
pub fn printable_ascii(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// BODY (RFC 6152): the content the client declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// `BODY=7BIT`.
    #[serde(rename = "7BIT")]
    SevenBit,
    /// `BODY=8BITMIME`.
    #[serde(rename = "8BITMIME")]
    EightBitMime,
}

impl Body {
    /// Parses the value of BODY; BINARYMIME is not among them because CHUNKING is not offered.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "7BIT" => Some(Self::SevenBit),
            "8BITMIME" => Some(Self::EightBitMime),
            _ => None,
        }
    }

    /// The parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SevenBit => "7BIT",
            Self::EightBitMime => "8BITMIME",
        }
    }
}

/// RET (RFC 3461): what a failure report should carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// The whole message.
    #[serde(rename = "FULL")]
    Full,
    /// The header fields only.
    #[serde(rename = "HDRS")]
    Headers,
}

impl Ret {
    /// Parses the value of RET.
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_uppercase().as_str() {
            "FULL" => Some(Self::Full),
            "HDRS" => Some(Self::Headers),
            _ => None,
        }
    }

    /// The parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Headers => "HDRS",
        }
    }
}

/// NOTIFY (RFC 3461): when the sender wants to hear about this recipient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Notify {
    /// `NEVER`.
    pub never: bool,
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
}

impl Notify {
    /// Parses `NEVER` or a comma-separated list of SUCCESS, FAILURE and DELAY, each once.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut n = Notify::default();
        for word in value.split(',') {
            let flag = match word.trim().to_ascii_uppercase().as_str() {
                "NEVER" => &mut n.never,
                "SUCCESS" => &mut n.success,
                "FAILURE" => &mut n.failure,
                "DELAY" => &mut n.delay,
                other => return Err(format!("unknown NOTIFY value {other:?}")),
            };
            if *flag {
                return Err(format!("NOTIFY names {word} twice"));
            }
            *flag = true;
        }
        if n.never && (n.success || n.failure || n.delay) {
            return Err("NOTIFY=NEVER cannot be combined with other values".into());
        }
        Ok(n)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.never {
            return f.write_str("NEVER");
        }
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        f.write_str(&words.join(","))
    }
}

impl TryFrom<String> for Notify {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        Notify::parse(&value)
    }
}

impl From<Notify> for String {
    fn from(n: Notify) -> String {
        n.to_string()
    }
}

/// ORCPT (RFC 3461): the recipient as the sender first named it, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Orcpt {
    /// The address type (`rfc822`, `utf-8`).
    pub addr_type: String,
    /// The address, decoded from xtext.
    pub address: String,
}

impl Orcpt {
    /// Parses the wire form `addr-type;xtext`.
    pub fn parse_xtext(value: &str) -> Result<Self, String> {
        let (addr_type, encoded) = value
            .split_once(';')
            .ok_or("ORCPT needs addr-type;address")?;
        let address = xtext::decode(encoded).map_err(|e| format!("ORCPT: {e}"))?;
        Self::new(addr_type, &address)
    }

    /// Checks the parts: an atom for the type, 1 to 500 printable ASCII characters for the
    /// address.
    pub fn new(addr_type: &str, address: &str) -> Result<Self, String> {
        let atom = !addr_type.is_empty()
            && addr_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !atom {
            return Err(format!("ORCPT address type {addr_type:?} is not valid"));
        }
        if address.is_empty() || address.len() > 500 || !printable_ascii(address) {
            return Err("ORCPT address must be 1 to 500 printable characters".into());
        }
        Ok(Self {
            addr_type: addr_type.to_ascii_lowercase(),
            address: address.to_string(),
        })
    }

    /// The wire form, `addr-type;xtext`.
    pub fn to_xtext(&self) -> String {
        format!("{};{}", self.addr_type, xtext::encode(&self.address))
    }
}

impl fmt::Display for Orcpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.address)
    }
}

impl TryFrom<String> for Orcpt {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let (t, a) = value.split_once(';').ok_or("no ';' in ORCPT")?;
        Orcpt::new(t, a)
    }
}

impl From<Orcpt> for String {
    fn from(o: Orcpt) -> String {
        o.to_string()
    }
}

/// Checks a decoded ENVID: 1 to 100 printable ASCII characters (RFC 3461 4.4).
pub fn check_envid(envid: &str) -> Result<(), String> {
    if envid.is_empty() || envid.len() > 100 || !printable_ascii(envid) {
        return Err("ENVID must be 1 to 100 printable characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_values() {
        let n = Notify::parse("failure,DELAY").unwrap();
        assert_eq!(n.to_string(), "FAILURE,DELAY");
        assert_eq!(Notify::parse("NEVER").unwrap().to_string(), "NEVER");
        for bad in ["NEVER,SUCCESS", "FAILURE,FAILURE", "", "SOMETIMES"] {
            assert!(Notify::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orcpt_is_decoded_and_encoded_again() {
        let o = Orcpt::parse_xtext("rfc822;carol+2Bfar@far.test").unwrap();
        assert_eq!(o.address, "carol+far@far.test");
        assert_eq!(o.to_xtext(), "rfc822;carol+2Bfar@far.test");
        assert_eq!(o.to_string(), "rfc822;carol+far@far.test");
        assert!(Orcpt::parse_xtext("rfc822;a+0D+0Ab@x").is_err());
        assert!(Orcpt::parse_xtext("rfc822;a+00@x").is_err());
        assert!(Orcpt::parse_xtext(";a@x").is_err());
        assert!(Orcpt::parse_xtext("rfc822").is_err());
    }

    #[test]
    fn queue_files_keep_the_old_textual_forms() {
        let n: Notify = serde_json::from_str("\"FAILURE,DELAY\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"FAILURE,DELAY\"");
        let o: Orcpt = serde_json::from_str("\"rfc822;a+b@x.test\"").unwrap();
        assert_eq!(o.address, "a+b@x.test");
        let r: Ret = serde_json::from_str("\"FULL\"").unwrap();
        assert_eq!(r, Ret::Full);
        let b: Body = serde_json::from_str("\"8BITMIME\"").unwrap();
        assert_eq!(b, Body::EightBitMime);
    }
}
