//! Header stamper: adds a header field to every message at OnEndOfData, and optionally a
//! disclaimer at the end of plain-text bodies.
//!
//! Parameters:
//! - `header` (default `X-Mta-Stamp`): the field name;
//! - `value` (default `stamped`): its value; `{session}` is replaced by the SMTP session id and
//!   `{remote}` by the client's address;
//! - `disclaimer` (optional): a line appended to bodies of `text/plain` messages (or messages
//!   without a Content-Type), so it never breaks a MIME structure.

use mta_agent_sdk::prelude::*;

/// The agent; one clone per SMTP session.
#[derive(Clone, Debug)]
pub struct HeaderStamper {
    header: String,
    value: String,
    disclaimer: Option<String>,
}

#[agent]
impl SmtpReceiveAgent for HeaderStamper {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let header = parameters.get_or("header", "X-Mta-Stamp").to_string();
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(AgentError::msg(format!(
                "parameter \"header\": {header:?} is not a header field name"
            )));
        }
        Ok(Self {
            header,
            value: parameters.get_or("value", "stamped").to_string(),
            disclaimer: parameters.get("disclaimer").map(str::to_string),
        })
    }

    fn on_end_of_data(&mut self, event: &mut EndOfDataEvent<'_>) -> AgentResult {
        let session = event.session();
        let value = self
            .value
            .replace("{session}", &session.id.to_string())
            .replace("{remote}", &session.remote_endpoint);
        let mut item = event.mail_item();
        item.add_header(&self.header, &value)?;
        if let Some(disclaimer) = &self.disclaimer {
            let plain = item
                .header("Content-Type")
                .is_none_or(|t| t.to_ascii_lowercase().starts_with("text/plain"));
            if plain {
                let mut body = item.body();
                if !body.is_empty() && !body.ends_with(b"\n") {
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(disclaimer.as_bytes());
                body.extend_from_slice(b"\r\n");
                item.set_body(body)?;
            }
        }
        Ok(())
    }
}

export_agents!("Mta.Samples.HeaderStamperFactory" => HeaderStamper);

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};

    #[test]
    fn stamps_and_appends_disclaimer_to_plain_text() {
        let mut agent = testing::create::<HeaderStamper>(&[
            ("header", "X-Scanned"),
            ("value", "by mta from {remote}"),
            ("disclaimer", "-- sent through mta"),
        ])
        .unwrap();
        let message = TestMessage::parse(b"Subject: hi\r\n\r\nhello\r\n");
        let mut host = TestHost::smtp("192.0.2.9:1234").with_message(message);
        testing::run(&mut agent, Event::OnEndOfData, &mut host).unwrap();
        let message = host.message().unwrap();
        assert_eq!(
            message.header("X-Scanned"),
            Some("by mta from 192.0.2.9:1234")
        );
        assert_eq!(message.body, b"hello\r\n-- sent through mta\r\n");
    }

    #[test]
    fn leaves_multipart_bodies_alone() {
        let mut agent = testing::create::<HeaderStamper>(&[("disclaimer", "x")]).unwrap();
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n";
        let mut host = TestHost::smtp("192.0.2.9:1").with_message(TestMessage::parse(raw));
        testing::run(&mut agent, Event::OnEndOfData, &mut host).unwrap();
        assert_eq!(host.message().unwrap().body, TestMessage::parse(raw).body);
        assert_eq!(
            host.message().unwrap().header("X-Mta-Stamp"),
            Some("stamped")
        );
    }

    #[test]
    fn refuses_an_invalid_header_name() {
        assert!(testing::create::<HeaderStamper>(&[("header", "Bad Name")]).is_err());
    }

    #[test]
    fn declares_only_end_of_data() {
        assert_eq!(
            HeaderStamper::EVENTS.iter().collect::<Vec<_>>(),
            [Event::OnEndOfData]
        );
    }
}
