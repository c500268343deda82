//! Mailbox addresses as RFC 5321 4.1.2 writes them in MAIL FROM and RCPT TO (with RFC 6531's
//! UTF-8 where SMTPUTF8 allows it): the one check every address passes before it enters an
//! envelope, whether it came from a client, a file, a header field or an agent.

/// Why an address was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

fn err(text: impl Into<String>) -> AddressError {
    AddressError(text.into())
}

/// A path read from a command: the address inside `<...>` and what follows the `>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Path<'a> {
    /// The mailbox (`local@domain`); empty for `<>`; `postmaster` for `<Postmaster>`.
    pub address: String,
    /// The rest of the line after `>`.
    pub rest: &'a str,
}

/// Reads `<[@route,...:]mailbox>` at the start of `text`. A source route is dropped (RFC 5321
/// 4.1.1.3 lets servers ignore it). `<>` and `<postmaster>` (any case) are returned as they are
/// for the caller to accept or refuse.
pub fn parse_path(text: &str) -> Result<Path<'_>, AddressError> {
    let inner = text
        .strip_prefix('<')
        .ok_or_else(|| err("the address must be in angle brackets"))?;
    let close = closing_bracket(inner).ok_or_else(|| err("no closing '>'"))?;
    let (mut address, rest) = (&inner[..close], &inner[close + 1..]);
    if address.starts_with('@') {
        // A source route: `@a.test,@b.test:user@c.test`.
        let colon = address
            .find(':')
            .ok_or_else(|| err("a source route must end with ':'"))?;
        address = &address[colon + 1..];
    }
    if address.is_empty() || address.eq_ignore_ascii_case("postmaster") {
        return Ok(Path {
            address: address.to_string(),
            rest,
        });
    }
    check_mailbox(address)?;
    Ok(Path {
        address: address.to_string(),
        rest,
    })
}

/// The position of the `>` that closes a path, skipping quoted strings.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Checks a mailbox `local-part@domain`: a dot-string or quoted local part of at most 64
/// octets, a domain of labels or an address literal, at most 254 octets in all, no control
/// characters anywhere. Non-ASCII is allowed here; whether the transaction may carry it
/// (SMTPUTF8) is the caller's rule.
pub fn check_mailbox(address: &str) -> Result<(), AddressError> {
    if address.len() > 254 {
        return Err(err("the address is longer than 254 octets"));
    }
    let at = address
        .rfind('@')
        .ok_or_else(|| err("the address has no '@'"))?;
    let (local, domain) = (&address[..at], &address[at + 1..]);
    check_local_part(local)?;
    check_domain(domain)
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() || local.len() > 64 {
        return Err(err("the local part must be 1 to 64 octets"));
    }
    if let Some(quoted) = local.strip_prefix('"') {
        let inner = quoted
            .strip_suffix('"')
            .ok_or_else(|| err("unterminated quoted local part"))?;
        let mut escaped = false;
        for c in inner.chars() {
            if c.is_control() {
                return Err(err("control character in the local part"));
            }
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => return Err(err("unescaped '\"' in the local part")),
                _ => {}
            }
        }
        if escaped {
            return Err(err("the local part ends with '\\'"));
        }
        return Ok(());
    }
    for atom in local.split('.') {
        if atom.is_empty() || !atom.chars().all(is_atext) {
            return Err(err(format!("the local part {local:?} is not a dot-string")));
        }
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() || domain.len() > 253 + 2 {
        return Err(err("the domain must be 1 to 255 octets"));
    }
    if let Some(literal) = domain.strip_prefix('[') {
        let inner = literal
            .strip_suffix(']')
            .ok_or_else(|| err("unterminated address literal"))?;
        let ok = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
        return if ok {
            Ok(())
        } else {
            Err(err("the address literal is not valid"))
        };
    }
    for label in domain.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control())
            });
        if !ok {
            return Err(err(format!("the domain {domain:?} is not valid")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path, and the address and rest it reads as (`Err` when it is refused).
    type Case<'a> = (&'a str, Result<(&'a str, &'a str), ()>);

    #[test]
    fn paths() {
        let table: &[Case] = &[
            ("<a@b.test>", Ok(("a@b.test", ""))),
            ("<a@b.test> SIZE=10", Ok(("a@b.test", " SIZE=10"))),
            ("<>", Ok(("", ""))),
            ("<Postmaster>", Ok(("Postmaster", ""))),
            ("<@r1.test,@r2.test:a@b.test>", Ok(("a@b.test", ""))),
            ("<\"a>b\"@b.test>", Ok(("\"a>b\"@b.test", ""))),
            ("<\"a\\\"b\"@b.test>", Ok(("\"a\\\"b\"@b.test", ""))),
            (
                "<caf\u{e9}@b\u{fc}cher.test>",
                Ok(("caf\u{e9}@b\u{fc}cher.test", "")),
            ),
            ("<a@[127.0.0.1]>", Ok(("a@[127.0.0.1]", ""))),
            ("a@b.test", Err(())),
            ("<a@b.test", Err(())),
            ("<a b@b.test>", Err(())),
            ("<a..b@b.test>", Err(())),
            ("<.a@b.test>", Err(())),
            ("<a@>", Err(())),
            ("<@b.test>", Err(())),
            ("<a@b_c.test>", Err(())),
            ("<a@-b.test>", Err(())),
            ("<a@b.test\u{0}>", Err(())),
            ("<nobody>", Err(())),
        ];
        for (text, expected) in table {
            let got = parse_path(text)
                .map(|p| (p.address, p.rest.to_string()))
                .map_err(|_| ());
            let expected = expected.map(|(a, r)| (a.to_string(), r.to_string()));
            assert_eq!(got, expected, "{text}");
        }
        assert!(check_mailbox(&format!("{}@b.test", "a".repeat(65))).is_err());
    }
}
