//! The replay directory: messages whose envelope is in leading `X-Sender: <a@b> PARAMS` and
//! `X-Receiver: <x@y> PARAMS` fields, as a Foreign connector's drop directory writes them. The
//! X-fields are removed before the message goes on.

use super::Format;
use crate::message::{Envelope, EnvelopeRecipient, MailItem, Message};
use crate::smtp::command::{self, Command};

/// The replay format.
pub struct Replay {
    /// The address `X-Receiver: <Postmaster>` stands for.
    pub postmaster: String,
}

impl Format for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    /// The envelope fields are read with the very parser of MAIL FROM and RCPT TO, so a replay
    /// file's parameters are checked and decoded as a client's would be.
    fn read(&self, mut message: Message) -> Result<MailItem, String> {
        let mut envelope = Envelope::default();
        let mut sender = None;
        // The envelope fields lead the header block.
        for field in message.fields() {
            match field.name().to_ascii_lowercase().as_str() {
                "x-sender" => {
                    let line = format!("MAIL FROM:{}", field.value());
                    let Ok(Command::Mail(from)) = command::parse(&line) else {
                        return Err(format!("X-Sender: {}", refusal(&line)));
                    };
                    envelope.ret = from.ret;
                    envelope.envid = from.envid;
                    envelope.body_type = from.body;
                    envelope.smtputf8 = from.smtputf8;
                    sender = Some(from.address);
                }
                "x-receiver" => {
                    let line = format!("RCPT TO:{}", field.value());
                    let Ok(Command::Rcpt(to)) = command::parse(&line) else {
                        return Err(format!("X-Receiver: {}", refusal(&line)));
                    };
                    let address = if to.address.eq_ignore_ascii_case("postmaster") {
                        self.postmaster.clone()
                    } else {
                        to.address
                    };
                    envelope.recipients.push(EnvelopeRecipient {
                        address,
                        notify: to.notify,
                        orcpt: to.orcpt,
                        ..EnvelopeRecipient::default()
                    });
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

/// Why a command line was refused, for the log.
fn refusal(line: &str) -> String {
    match command::parse(line) {
        Err(r) => r.to_string(),
        Ok(_) => "not an address".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay() -> Replay {
        Replay {
            postmaster: "postmaster@example.test".into(),
        }
    }

    #[test]
    fn envelope_from_x_fields_which_are_removed() {
        let item = replay()
            .read(Message::parse(b"X-Sender: <a@elsewhere.test> RET=HDRS ENVID=e1\r\nX-Receiver: <alice@example.test> NOTIFY=FAILURE\r\nX-Receiver: <bob@example.test>\r\nSubject: r\r\n\r\nbody\r\n"))
            .unwrap();
        assert_eq!(item.envelope.from, "a@elsewhere.test");
        assert_eq!(
            item.envelope.ret,
            Some(crate::message::parameters::Ret::Headers)
        );
        assert_eq!(item.envelope.recipients.len(), 2);
        assert_eq!(
            item.envelope.recipients[0].notify.map(|n| n.to_string()),
            Some("FAILURE".to_string())
        );
        assert_eq!(item.message.to_bytes(), b"Subject: r\r\n\r\nbody\r\n");
    }

    #[test]
    fn null_sender_is_allowed_missing_envelope_is_not() {
        assert_eq!(
            replay()
                .read(Message::parse(
                    b"X-Sender: <>\r\nX-Receiver: <a@b.test>\r\n\r\nx"
                ))
                .unwrap()
                .envelope
                .from,
            ""
        );
        assert!(replay()
            .read(Message::parse(b"Subject: no envelope\r\n\r\nx"))
            .is_err());
        assert!(replay()
            .read(Message::parse(b"X-Sender: <a@b.test>\r\n\r\nx"))
            .is_err());
        assert!(replay()
            .read(Message::parse(
                b"X-Sender: <a@b.test> ENVID=a+0D+0A\r\nX-Receiver: <a@b.test>\r\n\r\nx"
            ))
            .is_err());
        let item = replay()
            .read(Message::parse(
                b"X-Sender: <>\r\nX-Receiver: <Postmaster>\r\n\r\nx",
            ))
            .unwrap();
        assert_eq!(
            item.envelope.recipients[0].address,
            "postmaster@example.test"
        );
    }
}
