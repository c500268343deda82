//! The pickup directory: `*.eml` files whose envelope comes from their header fields.
//!
//! The sender is `Sender` (or else the first `From`); the recipients are every address of `To`,
//! `Cc` and `Bcc`; `Bcc` is removed from the message; `Message-ID` and `Date` are added when
//! missing.

use super::Format;
use crate::message::{Envelope, EnvelopeRecipient, MailItem, Message};

/// The pickup format.
pub struct Pickup {
    /// Our name, for generated Message-IDs.
    pub hostname: String,
}

/// The addresses of a header field, parsed with `mail-parser`.
pub(crate) fn addresses(message: &mail_parser::Message<'_>, field: &str) -> Vec<String> {
    let list = match field {
        "To" => message.to(),
        "Cc" => message.cc(),
        "Bcc" => message.bcc(),
        "From" => message.from(),
        "Sender" => message.sender(),
        _ => None,
    };
    // Every address must pass the same check as one in RCPT TO.
    list.map(|l| {
        l.iter()
            .filter_map(|a| a.address().map(str::to_string))
            .filter(|a| crate::smtp::address::check_mailbox(a).is_ok())
            .collect()
    })
    .unwrap_or_default()
}

impl Format for Pickup {
    fn name(&self) -> &'static str {
        "pickup"
    }

    fn read(&self, mut message: Message) -> Result<MailItem, String> {
        let head = message.head();
        let parsed = mail_parser::MessageParser::default()
            .parse_headers(&head)
            .ok_or("not a message: no header block")?;
        let from = addresses(&parsed, "Sender")
            .into_iter()
            .next()
            .or_else(|| addresses(&parsed, "From").into_iter().next())
            .ok_or("no Sender or From address")?;
        let mut recipients: Vec<EnvelopeRecipient> = Vec::new();
        for field in ["To", "Cc", "Bcc"] {
            for address in addresses(&parsed, field) {
                if !recipients
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(&address))
                {
                    recipients.push(EnvelopeRecipient::new(&address));
                }
            }
        }
        if recipients.is_empty() {
            return Err("no recipient in To, Cc or Bcc".into());
        }
        if message.fields().is_empty() {
            return Err("not a message: no header block".into());
        }
        message.remove_header("Bcc");
        if message.header("Message-ID").is_none() {
            let id = crate::message::new_message_id(&self.hostname);
            message
                .add_header("Message-ID", &id)
                .map_err(|e| e.to_string())?;
        }
        if message.header("Date").is_none() {
            message
                .add_header("Date", &crate::message::date::rfc2822_now())
                .map_err(|e| e.to_string())?;
        }
        let smtputf8 = !from.is_ascii() || recipients.iter().any(|r| !r.address.is_ascii());
        Ok(MailItem {
            envelope: Envelope {
                from,
                recipients,
                smtputf8,
                ..Envelope::default()
            },
            message,
            ..MailItem::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_from_headers_and_bcc_stripped() {
        let p = Pickup {
            hostname: "h.test".into(),
        };
        let item = p
            .read(Message::parse(b"From: Ann <ann@example.test>\r\nTo: bob@example.test, \"C\" <c@x.test>\r\nBcc: hidden@example.test\r\nSubject: s\r\n\r\nbody\r\n"))
            .unwrap();
        assert_eq!(item.envelope.from, "ann@example.test");
        let rcpts: Vec<_> = item
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(
            rcpts,
            ["bob@example.test", "c@x.test", "hidden@example.test"]
        );
        assert!(item.message.header("Bcc").is_none());
        assert!(item
            .message
            .header("Message-ID")
            .unwrap()
            .ends_with("@h.test>"));
        assert!(item.message.header("Date").is_some());
    }

    #[test]
    fn files_without_sender_or_recipients_are_bad() {
        let p = Pickup {
            hostname: "h".into(),
        };
        assert!(p.read(Message::parse(b"To: a@b.test\r\n\r\nx")).is_err());
        assert!(p.read(Message::parse(b"From: a@b.test\r\n\r\nx")).is_err());
        assert!(p.read(Message::parse(b"")).is_err());
    }
}
