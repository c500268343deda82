//! The replay directory: messages whose envelope is in leading `X-Sender: <a@b> PARAMS` and
//! `X-Receiver: <x@y> PARAMS` fields, as a Foreign connector's drop directory writes them. The
//! X-fields are removed before the message goes on.

use super::Format;
use crate::message::{Envelope, EnvelopeRecipient, MailItem, Message};

/// The replay format.
pub struct Replay;

/// `<addr> PARAM=VALUE ...` -> (addr, params).
fn path_and_params(value: &str) -> Result<(String, Vec<(String, String)>), String> {
    let value = value.trim();
    let (path, rest) = if let Some(stripped) = value.strip_prefix('<') {
        let end = stripped
            .find('>')
            .ok_or_else(|| format!("unterminated address in {value:?}"))?;
        (stripped[..end].to_string(), &stripped[end + 1..])
    } else {
        let end = value.find(' ').unwrap_or(value.len());
        (value[..end].to_string(), &value[end..])
    };
    let params = rest
        .split_whitespace()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_ascii_uppercase(), v.to_string()),
            None => (p.to_ascii_uppercase(), String::new()),
        })
        .collect();
    Ok((path, params))
}

impl Format for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn read(&self, raw: &[u8]) -> Result<MailItem, String> {
        let mut message = Message::parse(raw);
        let mut envelope = Envelope::default();
        let mut sender = None;
        // The envelope fields lead the header block.
        for field in message.fields() {
            match field.name().to_ascii_lowercase().as_str() {
                "x-sender" => {
                    let (path, params) = path_and_params(&field.value())?;
                    for (k, v) in params {
                        match k.as_str() {
                            "RET" => envelope.ret = Some(v),
                            "ENVID" => envelope.envid = Some(v),
                            "BODY" => envelope.body_type = Some(v),
                            "SMTPUTF8" => envelope.smtputf8 = true,
                            _ => {}
                        }
                    }
                    sender = Some(path);
                }
                "x-receiver" => {
                    let (path, params) = path_and_params(&field.value())?;
                    if path.is_empty() {
                        return Err("empty X-Receiver".into());
                    }
                    let mut r = EnvelopeRecipient::new(&path);
                    for (k, v) in params {
                        match k.as_str() {
                            "NOTIFY" => r.notify = Some(v),
                            "ORCPT" => r.orcpt = Some(v),
                            _ => {}
                        }
                    }
                    envelope.recipients.push(r);
                }
                _ => break,
            }
        }
        envelope.from = sender.ok_or("no leading X-Sender field")?;
        if envelope.recipients.is_empty() {
            return Err("no leading X-Receiver field".into());
        }
        message.remove_header("X-Sender");
        message.remove_header("X-Receiver");
        Ok(MailItem {
            envelope,
            message,
            ..MailItem::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_from_x_fields_which_are_removed() {
        let item = Replay
            .read(b"X-Sender: <a@elsewhere.test> RET=HDRS ENVID=e1\r\nX-Receiver: <alice@example.test> NOTIFY=FAILURE\r\nX-Receiver: <bob@example.test>\r\nSubject: r\r\n\r\nbody\r\n")
            .unwrap();
        assert_eq!(item.envelope.from, "a@elsewhere.test");
        assert_eq!(item.envelope.ret.as_deref(), Some("HDRS"));
        assert_eq!(item.envelope.recipients.len(), 2);
        assert_eq!(
            item.envelope.recipients[0].notify.as_deref(),
            Some("FAILURE")
        );
        assert_eq!(item.message.to_bytes(), b"Subject: r\r\n\r\nbody\r\n");
    }

    #[test]
    fn null_sender_is_allowed_missing_envelope_is_not() {
        assert_eq!(
            Replay
                .read(b"X-Sender: <>\r\nX-Receiver: <a@b.test>\r\n\r\nx")
                .unwrap()
                .envelope
                .from,
            ""
        );
        assert!(Replay.read(b"Subject: no envelope\r\n\r\nx").is_err());
        assert!(Replay.read(b"X-Sender: <a@b.test>\r\n\r\nx").is_err());
    }
}
