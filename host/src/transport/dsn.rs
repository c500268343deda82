//! Delivery status notifications (RFC 3464): non-delivery reports and delay notices, built with
//! `mail-builder` as `multipart/report; report-type=delivery-status`.
//!
//! A notification goes to the envelope sender from the null sender `<>`, and never to the null
//! sender: a message from `<>` that fails is only logged (no loops of bounces).

use crate::message::{Envelope, EnvelopeRecipient, MailItem, Message};
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;
use mta_agent_sdk::SmtpResponse;

/// What a notification reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Delivery failed for good.
    Failed,
    /// Delivery is delayed; we keep trying.
    Delayed,
}

/// Builds the notification for `failures` of `item`, or `None` when the sender is `<>`.
pub fn notification(
    item: &MailItem,
    failures: &[(EnvelopeRecipient, SmtpResponse)],
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
    for (r, response) in failures {
        human.push_str(&format!("  {}: {}\r\n", r.address, response));
    }
    let arrival = crate::message::date::rfc2822(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(item.trace.received_ms),
    );
    let mut status = format!("Reporting-MTA: dns; {hostname}\r\n");
    if let Some(envid) = &item.envelope.envid {
        status.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    status.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for (r, response) in failures {
        status.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            status.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
        }
        status.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        status.push_str(&format!("Action: {action}\r\n"));
        let code = if response.enhanced_code().is_empty() {
            if kind == Kind::Failed {
                "5.0.0"
            } else {
                "4.0.0"
            }
        } else {
            response.enhanced_code()
        };
        status.push_str(&format!("Status: {code}\r\n"));
        status.push_str(&format!("Diagnostic-Code: smtp; {response}\r\n"));
    }
    let full = item.envelope.ret.as_deref() == Some("FULL");
    let original = if full {
        MimePart::new("message/rfc822", item.message.to_bytes())
    } else {
        let mut only_headers = item.message.clone();
        only_headers.set_body(Vec::new());
        let bytes = only_headers.to_bytes();
        MimePart::new("text/rfc822-headers", bytes)
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
    let bytes = MessageBuilder::new()
        .from(("Mail Delivery System", postmaster))
        .to(item.envelope.from.as_str())
        .subject(format!("{title}: {subject}"))
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
            ..Envelope::default()
        },
        message: Message::parse(&bytes),
        ..MailItem::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(from: &str) -> MailItem {
        MailItem {
            id: "Q1".into(),
            envelope: Envelope {
                from: from.into(),
                recipients: vec![EnvelopeRecipient::new("x@far.test")],
                envid: Some("env-7".into()),
                ..Envelope::default()
            },
            message: Message::parse(
                b"Subject: hello\r\nFrom: a@example.test\r\n\r\nsecret body\r\n",
            ),
            ..MailItem::default()
        }
    }

    #[test]
    fn a_non_delivery_report_is_a_valid_rfc3464_report() {
        let failure = (
            EnvelopeRecipient::new("x@far.test"),
            SmtpResponse::new(550, "5.1.1", "user unknown").unwrap(),
        );
        let ndr = notification(
            &item("a@example.test"),
            std::slice::from_ref(&failure),
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
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.contains("multipart/report") && text.contains("report-type=\"delivery-status\"")
                || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(
            text.contains("Final-Recipient: rfc822; x@far.test"),
            "{text}"
        );
        assert!(
            text.contains("Action: failed") && text.contains("Status: 5.1.1"),
            "{text}"
        );
        assert!(text.contains("Original-Envelope-Id: env-7"));
        assert!(
            text.contains("text/rfc822-headers") && !text.contains("secret body"),
            "headers only unless RET=FULL"
        );
        // never to the null sender
        assert!(notification(
            &item(""),
            &[failure],
            Kind::Failed,
            "mta.test",
            "postmaster@example.test"
        )
        .is_none());
    }
}
