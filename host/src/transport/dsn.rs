//! Delivery status notifications (RFC 3464): non-delivery reports and delay notices, built with
//! `mail-builder` as `multipart/report; report-type=delivery-status`.
//!
//! A notification goes to the envelope sender from the null sender `<>`, and never to the null
//! sender: a message from `<>` that fails is only logged (no loops of bounces).
//!
//! It carries the whole original message (`message/rfc822`, 7bit or 8bit, never base64, as
//! RFC 2046 5.2.1 requires) only when the sender asked for it (RET=FULL) **and** someone vouched
//! for the sender (an authenticated client, a trusted server, this host's own directories and
//! agents); otherwise only its header fields (`text/rfc822-headers`). So a forged sender can
//! never make this host deliver arbitrary content to a third party. A message whose body was
//! spooled (larger than the spool threshold) comes back as its header fields only.

use super::delivery::Diagnosis;
use crate::message::parameters::Ret;
use crate::message::{Envelope, EnvelopeRecipient, MailItem, Message};
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

/// What a notification reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Delivery failed for good.
    Failed,
    /// Delivery is delayed; we keep trying.
    Delayed,
}

/// Folds a field value so that no line passes 78 characters where it can break at a space,
/// and none passes 998 where it cannot (RFC 5322 2.1.1).
fn fold(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / 64);
    let mut line = 0usize;
    for word in value.split(' ') {
        let mut word = word;
        if line > 0 && line + 1 + word.len() > 76 {
            out.push_str("\r\n ");
            line = 1;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        while line + word.len() > 900 {
            let mut cut = 900usize.saturating_sub(line).clamp(1, word.len());
            while !word.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 {
                cut = word.chars().next().map_or(word.len(), char::len_utf8);
            }
            out.push_str(&word[..cut]);
            out.push_str("\r\n ");
            word = &word[cut..];
            line = 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// Builds the notification for `failures` of `item`, or `None` when the sender is `<>`.
pub fn notification(
    item: &MailItem,
    failures: &[(EnvelopeRecipient, Diagnosis)],
    kind: Kind,
    hostname: &str,
    postmaster: &str,
) -> Option<MailItem> {
    if item.envelope.from.is_empty() || failures.is_empty() {
        return None;
    }
    let subject = item.message.header("Subject").unwrap_or_default();
    let (title, action) = match kind {
        Kind::Failed => ("Undeliverable", "failed"),
        Kind::Delayed => ("Delivery delayed", "delayed"),
    };
    let mut human = match kind {
        Kind::Failed => "Your message could not be delivered to these recipients:\r\n\r\n".to_string(),
        Kind::Delayed => "Your message has not been delivered yet to these recipients. We keep trying; you need not resend it.\r\n\r\n".to_string(),
    };
    for (r, why) in failures {
        human.push_str(&format!(
            "  {}: {}\r\n",
            r.address,
            fold(&why.response.to_string())
        ));
    }
    let arrival = crate::message::date::rfc2822(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(item.trace.received_ms),
    );
    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &item.envelope.envid {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for (r, why) in failures {
        status.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            status.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        status.push_str(&format!("Action: {action}\r\n"));
        let code = match why.status() {
            "" if kind == Kind::Failed => "5.0.0",
            "" => "4.0.0",
            code => code,
        };
        status.push_str(&format!("Status: {code}\r\n"));
        if let Some(remote) = &why.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {remote}\r\n"));
        }
        status.push_str(&format!(
            "Diagnostic-Code: {}\r\n",
            fold(&format!("smtp; {}", why.response))
        ));
    }
    // A spooled (large) original comes back as its header fields only, as Postfix does past
    // its bounce size limit: a report never holds a large message in memory.
    let full = item.envelope.ret == Some(Ret::Full)
        && item.trace.vouched
        && item.message.body().in_memory().is_some();
    let original = if full {
        let mut bytes = item.message.head();
        bytes.extend_from_slice(item.message.body().in_memory().unwrap_or_default());
        let encoding = if bytes.is_ascii() { "7bit" } else { "8bit" };
        MimePart::new("message/rfc822", bytes).transfer_encoding(encoding)
    } else {
        let mut headers = item.message.header_bytes();
        let encoding = if headers.is_ascii() { "7bit" } else { "8bit" };
        headers.extend_from_slice(b"\r\n");
        MimePart::new("text/rfc822-headers", headers).transfer_encoding(encoding)
    };
    let report = MimePart::new(
        mail_builder::headers::content_type::ContentType::new("multipart/report")
            .attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", human),
            MimePart::new("message/delivery-status", status.into_bytes()).transfer_encoding("7bit"),
            original.inline(),
        ],
    );
    let message_id = crate::message::new_message_id(hostname);
    let bytes = MessageBuilder::new()
        .from(("Mail Delivery System", postmaster))
        .to(item.envelope.from.as_str())
        .subject(format!("{title}: {subject}"))
        .message_id(message_id.trim_matches(['<', '>']))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .ok()?;
    Some(MailItem {
        envelope: Envelope {
            from: String::new(),
            recipients: vec![EnvelopeRecipient::new(&item.envelope.from)],
            smtputf8: !item.envelope.from.is_ascii(),
            ..Envelope::default()
        },
        message: Message::parse(&bytes),
        ..MailItem::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply;

    fn item(from: &str) -> MailItem {
        MailItem {
            id: "Q1".into(),
            envelope: Envelope {
                from: from.into(),
                recipients: vec![EnvelopeRecipient::new("x@far.test")],
                envid: Some("env-7".into()),
                ret: Some(Ret::Full),
                ..Envelope::default()
            },
            message: Message::parse(
                b"Subject: hello\r\nFrom: a@example.test\r\n\r\nsecret body\r\n",
            ),
            ..MailItem::default()
        }
    }

    fn failure() -> (EnvelopeRecipient, Diagnosis) {
        (
            EnvelopeRecipient::new("x@far.test"),
            Diagnosis::remote(reply(550, "5.1.1", "user unknown"), Some("mx.far.test")),
        )
    }

    #[test]
    fn a_non_delivery_report_is_a_valid_rfc3464_report() {
        let ndr = notification(
            &item("a@example.test"),
            &[failure()],
            Kind::Failed,
            "mta.test",
            "postmaster@example.test",
        )
        .unwrap();
        assert_eq!(ndr.envelope.from, "");
        assert_eq!(ndr.envelope.recipients[0].address, "a@example.test");
        let raw = ndr.message.to_bytes();
        let parsed = mail_parser::MessageParser::default().parse(&raw).unwrap();
        assert_eq!(parsed.subject(), Some("Undeliverable: hello"));
        assert!(parsed.message_id().unwrap().ends_with("@mta.test"));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("report-type"), "{text}");
        assert!(
            text.contains("Final-Recipient: rfc822; x@far.test"),
            "{text}"
        );
        assert!(
            text.contains("Action: failed") && text.contains("Status: 5.1.1"),
            "{text}"
        );
        assert!(text.contains("Remote-MTA: dns; mx.far.test"), "{text}");
        assert!(text.contains("Original-Envelope-Id: env-7"));
        assert!(
            text.contains("text/rfc822-headers") && !text.contains("secret body"),
            "headers only for a sender nobody vouched for, even with RET=FULL"
        );
        // never to the null sender
        assert!(notification(
            &item(""),
            &[failure()],
            Kind::Failed,
            "mta.test",
            "postmaster@example.test"
        )
        .is_none());
    }

    #[test]
    fn a_vouched_sender_gets_the_whole_message_unencoded() {
        let mut original = item("a@example.test");
        original.trace.vouched = true;
        let ndr = notification(
            &original,
            &[failure()],
            Kind::Failed,
            "mta.test",
            "pm@x.test",
        )
        .unwrap();
        let text = String::from_utf8_lossy(&ndr.message.to_bytes()).into_owned();
        assert!(text.contains("message/rfc822"), "{text}");
        assert!(text.contains("secret body"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("base64"), "{text}");
    }

    #[test]
    fn long_diagnostics_are_folded() {
        let long = fold(&format!(
            "smtp; 550 {} {}",
            "x".repeat(2000),
            "y ".repeat(100)
        ));
        assert!(long.split("\r\n").all(|l| l.len() <= 998), "{long}");
        assert!(long.contains("xxxx"));
        assert_eq!(fold("short value"), "short value");
    }
}
