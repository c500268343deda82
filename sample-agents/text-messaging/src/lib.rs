//! Text messaging: a delivery agent for the `MOBILE` delivery protocol, the pair of Exchange's
//! built-in text messaging delivery agent. Behind a Delivery Agent connector with address space
//! `MOBILE:*`, it turns each message into a short text and hands it to an SMS gateway through
//! the gateway's spool directory (one file per text: the non-SMTP system).
//!
//! Parameters:
//! - `spool` (required): the gateway's spool directory. While it is missing the queue is
//!   deferred (the gateway is down) and nothing is lost;
//! - `max_length` (optional, default 160): texts are cut to this many characters.
//!
//! A recipient's phone number is the local part of its address (`+15551234@mobile.example.test`);
//! a recipient whose local part is not a phone number (`+` and digits, at least 3 digits) fails
//! with `550 5.1.3`, and the sender gets a non-delivery report. Each text file is named
//! `<number>-<n>.sms` and holds `To:`, `From:` and the text (the subject, then the first body
//! line), written aside and renamed so the gateway never reads half a file.
//!
//! ```xml
//! <agent name="Text Messaging" baseType="DeliveryAgent"
//!        classFactory="Mta.Samples.TextMessagingFactory" assemblyPath="..." enabled="true">
//!   <parameter name="spool" value="/var/spool/sms-gateway"/>
//! </agent>
//! ```

use mta_agent_sdk::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The agent; one clone per delivery connection.
#[derive(Clone, Debug)]
pub struct TextMessaging {
    spool: PathBuf,
    max_length: usize,
    counter: Arc<AtomicU64>,
}

fn response(code: u16, enhanced: &str, text: &str) -> Result<SmtpResponse, AgentError> {
    Ok(SmtpResponse::new(code, enhanced, text)?)
}

/// `+` and digits, at least three of them.
fn is_phone_number(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    digits.len() >= 3 && digits.bytes().all(|b| b.is_ascii_digit())
}

impl TextMessaging {
    /// The text for a message: subject, then the first non-empty body line, cut to length.
    fn text(&self, subject: &str, body: &[u8]) -> String {
        let body = String::from_utf8_lossy(body);
        let first_line = body
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let whole = match (subject.is_empty(), first_line.is_empty()) {
            (false, false) => format!("{subject}: {first_line}"),
            (false, true) => subject.to_string(),
            _ => first_line.to_string(),
        };
        whole.chars().take(self.max_length).collect()
    }
}

#[agent]
impl DeliveryAgent for TextMessaging {
    const DELIVERY_PROTOCOL: &'static str = "MOBILE";

    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let max_length = parameters.parse::<usize>("max_length")?.unwrap_or(160);
        if max_length == 0 {
            return Err(AgentError::msg(
                "parameter \"max_length\" must be at least 1",
            ));
        }
        Ok(Self {
            spool: PathBuf::from(parameters.require("spool")?),
            max_length,
            counter: Arc::new(AtomicU64::new(0)),
        })
    }

    fn on_open_connection(&mut self, event: &mut OpenConnectionEvent<'_>) -> AgentResult {
        if !self.spool.is_dir() {
            let why = response(
                451,
                "4.4.0",
                &format!(
                    "SMS gateway spool {} is not available",
                    self.spool.display()
                ),
            )?;
            return event.defer_queue(std::time::Duration::from_secs(60), &why);
        }
        event.register_connection(
            "sms-gateway",
            &response(250, "2.0.0", "SMS gateway spool ready")?,
        )
    }

    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        let item = event.mail_item();
        let from = item.from();
        let text = self.text(&item.subject().unwrap_or_default(), &item.body());
        let recipients = item.recipients();
        for recipient in recipients {
            let number = recipient
                .address
                .split('@')
                .next()
                .unwrap_or("")
                .to_string();
            if !is_phone_number(&number) {
                let why = response(
                    550,
                    "5.1.3",
                    &format!("{} is not a phone number", recipient.address),
                )?;
                event.ack_recipient(&recipient.address, AckStatus::Fail, &why)?;
                continue;
            }
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let name = format!("{number}-{}-{n}.sms", std::process::id());
            let tmp = self.spool.join(format!(".{name}.tmp"));
            let written = std::fs::write(&tmp, format!("To: {number}\nFrom: {from}\n\n{text}\n"))
                .and_then(|()| std::fs::rename(&tmp, self.spool.join(&name)));
            match written {
                Ok(()) => event.ack_recipient(
                    &recipient.address,
                    AckStatus::Success,
                    &response(250, "2.0.0", "Text sent to the gateway")?,
                )?,
                Err(e) => {
                    let why = response(451, "4.4.0", &format!("SMS gateway spool: {e}"))?;
                    event.ack_recipient(&recipient.address, AckStatus::Retry, &why)?;
                }
            }
        }
        Ok(())
    }

    fn on_close_connection(&mut self, event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        event.unregister_connection()
    }
}

export_agents!("Mta.Samples.TextMessagingFactory" => TextMessaging);

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;

    fn spool(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("text-messaging-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn texts_go_to_the_spool_and_bad_numbers_fail() {
        let dir = spool("ok");
        let mut agent = testing::create::<TextMessaging>(&[
            ("spool", dir.to_str().unwrap()),
            ("max_length", "20"),
        ])
        .unwrap();
        let message =
            TestMessage::parse(b"Subject: Server down\r\n\r\n\r\nrestart db01 now please\r\n")
                .with_envelope(
                    "ops@example.test",
                    &["+15551234@mobile.example.test", "bob@mobile.example.test"],
                );
        let mut host = TestHost::for_message(message).with_arg("next_hop_domain", "MOBILE");
        testing::run(&mut agent, Event::OnOpenConnection, &mut host).unwrap();
        assert!(matches!(host.actions[0], Action::RegisterConnection { .. }));
        testing::run(&mut agent, Event::OnDeliverMailItem, &mut host).unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert_eq!(
            text,
            "To: +15551234\nFrom: ops@example.test\n\nServer down: restart\n"
        );
        assert!(host.actions.iter().any(|a| matches!(a, Action::AckRecipient { recipient, status: AckStatus::Success, .. } if recipient.starts_with("+1555"))));
        assert!(host.actions.iter().any(|a| matches!(a, Action::AckRecipient { recipient, status: AckStatus::Fail, response } if recipient.starts_with("bob") && response.enhanced_code() == "5.1.3")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_spool_defers_the_queue() {
        let mut agent =
            testing::create::<TextMessaging>(&[("spool", "/nonexistent/spool")]).unwrap();
        let mut host = TestHost::for_message(TestMessage::default());
        testing::run(&mut agent, Event::OnOpenConnection, &mut host).unwrap();
        assert!(
            matches!(&host.actions[0], Action::DeferQueue { response, .. } if response.code() == 451)
        );
        assert!(testing::create::<TextMessaging>(&[]).is_err());
    }
}
