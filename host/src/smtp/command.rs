//! SMTP and LMTP commands, parsed from one command line into values.
//!
//! MAIL and RCPT are parsed here rather than by `smtp-proto`'s request parser, because that
//! parser loses what a relay must keep or refuse: it decodes xtext into Latin-1 characters
//! (`+2Bfa` became `ú`), drops ORCPT's address type, turns `<Postmaster>` into an empty address
//! and invalid UTF-8 into U+FFFD, and accepts parameters of extensions we do not offer
//! (REQUIRETLS, MT-PRIORITY, BODY=BINARYMIME without CHUNKING). Every parameter is checked
//! against the extensions this server offers and kept as a typed value
//! ([`crate::message::parameters`]).

use crate::message::parameters::{check_envid, Body, Notify, Orcpt, Ret};
use crate::smtp::address::parse_path;
use crate::smtp::{reply, xtext};
use mta_agent_sdk::SmtpResponse;

/// One command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// EHLO (`extended`) or HELO.
    Hello {
        /// The client's name for itself.
        host: String,
        /// EHLO rather than HELO.
        extended: bool,
    },
    /// LHLO (RFC 2033).
    Lhlo {
        /// The client's name for itself.
        host: String,
    },
    /// MAIL FROM.
    Mail(MailFrom),
    /// RCPT TO.
    Rcpt(RcptTo),
    /// DATA.
    Data,
    /// BDAT (not offered).
    Bdat,
    /// RSET.
    Rset,
    /// NOOP.
    Noop,
    /// HELP.
    Help,
    /// QUIT.
    Quit,
    /// VRFY.
    Vrfy,
    /// EXPN.
    Expn,
    /// STARTTLS.
    StartTls,
    /// AUTH.
    Auth {
        /// PLAIN, LOGIN, or another (refused) mechanism, upper case.
        mechanism: String,
        /// The initial response, if given.
        initial: Option<String>,
    },
    /// XCLIENT (Postfix's extension, which the Front End uses to name its client).
    Xclient(Vec<(String, String)>),
    /// A known verb this server does not implement (ETRN, ATRN, BURL, TURN).
    NotImplemented(String),
}

/// MAIL FROM and its parameters, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse path; empty for `<>`.
    pub address: String,
    /// SIZE.
    pub size: Option<u64>,
    /// BODY.
    pub body: Option<Body>,
    /// RET.
    pub ret: Option<Ret>,
    /// ENVID, decoded.
    pub envid: Option<String>,
    /// SMTPUTF8.
    pub smtputf8: bool,
}

/// RCPT TO and its parameters, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptTo {
    /// The forward path; `postmaster` alone for `<Postmaster>`.
    pub address: String,
    /// NOTIFY.
    pub notify: Option<Notify>,
    /// ORCPT, decoded.
    pub orcpt: Option<Orcpt>,
}

fn syntax(text: &str) -> SmtpResponse {
    reply(501, "5.5.4", text)
}

/// Parses one command line (without its CRLF). The error is the reply to send.
pub fn parse(line: &str) -> Result<Command, SmtpResponse> {
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, args) = match line.find(' ') {
        Some(at) => (&line[..at], line[at + 1..].trim_start()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |command: Command| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(syntax(&format!("{verb} takes no parameters")))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" | "LHLO" => {
            let host = args.split(' ').next().unwrap_or("");
            if host.is_empty() || host.len() > 255 {
                return Err(syntax(&format!("Syntax: {verb} domain")));
            }
            let host = host.to_string();
            Ok(match verb.as_str() {
                "LHLO" => Command::Lhlo { host },
                v => Command::Hello {
                    host,
                    extended: v == "EHLO",
                },
            })
        }
        "MAIL" => mail(args).map(Command::Mail),
        "RCPT" => rcpt(args).map(Command::Rcpt),
        "DATA" => no_args(Command::Data),
        "BDAT" => Ok(Command::Bdat),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut words = args.split(' ').filter(|w| !w.is_empty());
            let mechanism = words
                .next()
                .ok_or_else(|| syntax("Syntax: AUTH mechanism [initial-response]"))?
                .to_ascii_uppercase();
            let initial = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(syntax("Syntax: AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "XCLIENT" => {
            let mut attributes = Vec::new();
            for word in args.split(' ').filter(|w| !w.is_empty()) {
                let (name, value) = word
                    .split_once('=')
                    .ok_or_else(|| syntax("Syntax: XCLIENT attribute=value ..."))?;
                let value =
                    xtext::decode(value).map_err(|e| syntax(&format!("XCLIENT {name}: {e}")))?;
                attributes.push((name.to_ascii_uppercase(), value));
            }
            if attributes.is_empty() {
                return Err(syntax("Syntax: XCLIENT attribute=value ..."));
            }
            Ok(Command::Xclient(attributes))
        }
        "ETRN" | "ATRN" | "BURL" | "TURN" => Ok(Command::NotImplemented(verb)),
        _ => Err(reply(500, "5.5.2", "Command unrecognized")),
    }
}

/// The text after `FROM:` or `TO:`, case-insensitively, with optional spaces after the colon.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// The `keyword[=value]` parameters after a path, each keyword once.
fn parameters(rest: &str) -> Result<Vec<(String, Option<&str>)>, SmtpResponse> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(syntax("Parameters must follow the address after a space"));
    }
    let mut out: Vec<(String, Option<&str>)> = Vec::new();
    for word in rest.split(' ').filter(|w| !w.is_empty()) {
        let (keyword, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let keyword_ok = !keyword.is_empty()
            && keyword.starts_with(|c: char| c.is_ascii_alphanumeric())
            && keyword
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        let value_ok = value.is_none_or(|v| {
            !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
        });
        if !keyword_ok || !value_ok {
            return Err(syntax(&format!("Invalid parameter {word}")));
        }
        let keyword = keyword.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == keyword) {
            return Err(syntax(&format!("Parameter {keyword} given twice")));
        }
        out.push((keyword, value));
    }
    Ok(out)
}

fn unsupported(keyword: &str) -> SmtpResponse {
    reply(555, "5.5.4", &format!("Unsupported parameter {keyword}"))
}

fn mail(args: &str) -> Result<MailFrom, SmtpResponse> {
    let path = after_keyword(args, "FROM:")
        .ok_or_else(|| syntax("Syntax: MAIL FROM:<address> [parameters]"))?;
    let path = parse_path(path)
        .map_err(|e| reply(501, "5.1.7", &format!("Bad sender address syntax: {e}")))?;
    if path.address.eq_ignore_ascii_case("postmaster") {
        return Err(reply(501, "5.1.7", "Bad sender address syntax"));
    }
    let mut mail = MailFrom {
        address: path.address,
        ..MailFrom::default()
    };
    for (keyword, value) in parameters(path.rest)? {
        let invalid = || syntax(&format!("Invalid parameter {keyword}"));
        match (keyword.as_str(), value) {
            ("SIZE", Some(v)) => mail.size = Some(v.parse().map_err(|_| invalid())?),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("BINARYMIME") => {
                return Err(reply(
                    555,
                    "5.5.4",
                    "BODY=BINARYMIME needs CHUNKING, which is not offered",
                ))
            }
            ("BODY", Some(v)) => mail.body = Some(Body::parse(v).ok_or_else(invalid)?),
            ("RET", Some(v)) => mail.ret = Some(Ret::parse(v).ok_or_else(invalid)?),
            ("ENVID", Some(v)) => {
                let envid = xtext::decode(v).map_err(|_| invalid())?;
                check_envid(&envid).map_err(|e| syntax(&e))?;
                mail.envid = Some(envid);
            }
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            // AUTH=<mailbox> (RFC 4954 5): accepted and not used.
            ("AUTH", Some(v)) => {
                xtext::decode(v).map_err(|_| invalid())?;
            }
            ("SIZE" | "BODY" | "RET" | "ENVID" | "AUTH", None) | ("SMTPUTF8", Some(_)) => {
                return Err(invalid())
            }
            _ => return Err(unsupported(&keyword)),
        }
    }
    Ok(mail)
}

fn rcpt(args: &str) -> Result<RcptTo, SmtpResponse> {
    let path = after_keyword(args, "TO:")
        .ok_or_else(|| syntax("Syntax: RCPT TO:<address> [parameters]"))?;
    let path = parse_path(path)
        .map_err(|e| reply(501, "5.1.3", &format!("Bad recipient address syntax: {e}")))?;
    if path.address.is_empty() {
        return Err(reply(501, "5.1.3", "Bad recipient address syntax"));
    }
    let mut rcpt = RcptTo {
        address: path.address,
        ..RcptTo::default()
    };
    for (keyword, value) in parameters(path.rest)? {
        let invalid = |why: String| syntax(&format!("Invalid parameter {keyword}: {why}"));
        match (keyword.as_str(), value) {
            ("NOTIFY", Some(v)) => rcpt.notify = Some(Notify::parse(v).map_err(invalid)?),
            ("ORCPT", Some(v)) => rcpt.orcpt = Some(Orcpt::parse_xtext(v).map_err(invalid)?),
            ("NOTIFY" | "ORCPT", None) => return Err(invalid("a value is needed".into())),
            _ => return Err(unsupported(&keyword)),
        }
    }
    Ok(rcpt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> (u16, String) {
        match parse(line) {
            Ok(_) => (250, String::new()),
            Err(r) => (r.code(), r.enhanced_code().to_string()),
        }
    }

    #[test]
    fn mail_parameters_are_values() {
        let Ok(Command::Mail(m)) =
            parse("mail from: <a@b.test> SIZE=100 BODY=8bitmime RET=HDRS ENVID=QQ+2B1 SMTPUTF8")
        else {
            panic!()
        };
        assert_eq!(m.address, "a@b.test");
        assert_eq!(m.size, Some(100));
        assert_eq!(m.body, Some(Body::EightBitMime));
        assert_eq!(m.ret, Some(Ret::Headers));
        assert_eq!(m.envid.as_deref(), Some("QQ+1"));
        assert!(m.smtputf8);
        let Ok(Command::Mail(m)) = parse("MAIL FROM:<>") else {
            panic!()
        };
        assert_eq!(m.address, "");
    }

    #[test]
    fn rcpt_parameters_are_values() {
        let Ok(Command::Rcpt(r)) =
            parse("RCPT TO:<c@far.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;c+2Bx@far.test")
        else {
            panic!()
        };
        assert_eq!(r.notify.unwrap().to_string(), "FAILURE,DELAY");
        assert_eq!(r.orcpt.unwrap().address, "c+x@far.test");
        let Ok(Command::Rcpt(r)) = parse("RCPT TO:<Postmaster>") else {
            panic!()
        };
        assert_eq!(r.address, "Postmaster");
    }

    #[test]
    fn what_is_wrong_or_not_offered_gets_its_code() {
        let table: &[(&str, u16, &str)] = &[
            (
                "MAIL FROM:<a@b.test> ENVID=x+0D+0ARCPT+20TO:<v@f.test>",
                501,
                "5.5.4",
            ),
            ("MAIL FROM:<a@b.test> ENVID=a+00", 501, "5.5.4"),
            ("MAIL FROM:<a@b.test> ENVID=a+1", 501, "5.5.4"),
            ("MAIL FROM:<a@b.test> BODY=BINARYMIME", 555, "5.5.4"),
            ("MAIL FROM:<a@b.test> BODY=9BIT", 501, "5.5.4"),
            ("MAIL FROM:<a@b.test> REQUIRETLS", 555, "5.5.4"),
            ("MAIL FROM:<a@b.test> MT-PRIORITY=3", 555, "5.5.4"),
            ("MAIL FROM:<a@b.test> SIZE=10 SIZE=20", 501, "5.5.4"),
            ("MAIL FROM:<a@b.test> SIZE=ten", 501, "5.5.4"),
            ("MAIL FROM:<a@b.test>SIZE=10", 501, "5.5.4"),
            ("MAIL FROM:a@b.test", 501, "5.1.7"),
            ("MAIL FROM:<a b@b.test>", 501, "5.1.7"),
            ("MAIL TO:<a@b.test>", 501, "5.5.4"),
            ("RCPT TO:<c@d.test> NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
            (
                "RCPT TO:<c@d.test> ORCPT=rfc822;a+0D+0Ab@d.test",
                501,
                "5.5.4",
            ),
            ("RCPT TO:<c@d.test> ORCPT=rfc822", 501, "5.5.4"),
            ("RCPT TO:<c@d.test> FOO=bar", 555, "5.5.4"),
            ("RCPT TO:<>", 501, "5.1.3"),
            ("RCPT TO:<nobody>", 501, "5.1.3"),
            ("STARTTLS now", 501, "5.5.4"),
            ("DATA x", 501, "5.5.4"),
            ("EHLO", 501, "5.5.4"),
            ("FOO", 500, "5.5.2"),
            ("XCLIENT ADDR=1.2.3.4 HELO=a+0", 501, "5.5.4"),
        ];
        for (line, c, e) in table {
            assert_eq!(code(line), (*c, e.to_string()), "{line}");
        }
    }

    #[test]
    fn xclient_values_are_decoded() {
        assert_eq!(
            parse("XCLIENT ADDR=10.0.0.1 helo=a+20b"),
            Ok(Command::Xclient(vec![
                ("ADDR".into(), "10.0.0.1".into()),
                ("HELO".into(), "a b".into())
            ]))
        );
    }
}
