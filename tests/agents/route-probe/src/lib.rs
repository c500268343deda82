//! The route probe: a routing test agent. It logs each categorizer event to `log` and, keyed by
//! the message's subject, takes routing actions: `delete_subject`, `defer_subject` (once, for
//! `defer_ms`), `panic_subject` (at OnResolvedMessage), `fork_subject` (keep the first recipient),
//! `expand_subject` with `add_recipient`; `override_recipient` with `override_domain` (at
//! OnResolvedMessage); `redirect` (`from=to`, may be repeated: at OnResolvedMessage, replace
//! the recipient `from` with `to`); `stamp` (a header listing the events seen, at OnCategorizedMessage);
//! `hold_file` (OnSubmittedMessage waits while that file exists, a minute at most).

use mta_agent_sdk::prelude::*;
use std::io::Write;
use std::time::Duration;

#[derive(Clone)]
pub struct RouteProbe {
    params: Parameters,
    seen: Vec<&'static str>,
}

impl RouteProbe {
    fn log(&self, event: &str, item: &MailItem<'_>) -> AgentResult {
        if let Some(path) = self.params.get("log") {
            let rcpts: Vec<String> = item.recipients().into_iter().map(|r| r.address).collect();
            let line = format!(
                "{event} subject={} rcpts={}\n",
                item.subject().unwrap_or_default(),
                rcpts.join(",")
            );
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(line.as_bytes())?;
        }
        Ok(())
    }

    /// Panics when the `panic_event` parameter names this event; never returns (an hour) when
    /// `hang_event` does.
    fn maybe_panic(&self, event: &str) {
        if self.params.get("panic_event") == Some(event) {
            panic!("route probe panics in {event}");
        }
        if self.params.get("hang_event") == Some(event) {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    fn subject_is(&self, key: &str, item: &MailItem<'_>) -> bool {
        self.params
            .get(key)
            .is_some_and(|s| item.subject().as_deref() == Some(s))
    }
}

#[agent]
impl RoutingAgent for RouteProbe {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            params: parameters.clone(),
            seen: Vec::new(),
        })
    }

    fn on_submitted_message(&mut self, event: &mut SubmittedMessageEvent<'_>) -> AgentResult {
        self.seen.push("OnSubmittedMessage");
        self.maybe_panic("OnSubmittedMessage");
        if let Some(hold) = self.params.get("hold_file") {
            let since = std::time::Instant::now();
            while std::path::Path::new(hold).exists() && since.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let item = event.mail_item();
        self.log("OnSubmittedMessage", &item)?;
        let (delete, fork, expand) = (
            self.subject_is("delete_subject", &item),
            self.subject_is("fork_subject", &item),
            self.subject_is("expand_subject", &item),
        );
        let defer = self.subject_is("defer_subject", &item)
            && item.property("route-probe.deferred").is_none();
        let first = item.recipients().first().map(|r| r.address.clone());
        if delete {
            return event.delete();
        }
        if defer {
            event
                .mail_item()
                .set_property("route-probe.deferred", "yes");
            let ms = self.params.parse::<u64>("defer_ms")?.unwrap_or(500);
            return event.defer(Duration::from_millis(ms), None);
        }
        if expand {
            event
                .mail_item()
                .add_recipient(self.params.require("add_recipient")?)?;
        }
        if fork {
            if let Some(first) = first {
                event.fork(&[&first])?;
            }
        }
        Ok(())
    }

    fn on_resolved_message(&mut self, event: &mut ResolvedMessageEvent<'_>) -> AgentResult {
        self.seen.push("OnResolvedMessage");
        self.maybe_panic("OnResolvedMessage");
        let item = event.mail_item();
        self.log("OnResolvedMessage", &item)?;
        let panic = self.subject_is("panic_subject", &item);
        if panic {
            panic!("route probe panics on purpose");
        }
        let redirects: Vec<(String, String)> = self
            .params
            .get_all("redirect")
            .filter_map(|pair| pair.split_once('='))
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        for (from, to) in redirects {
            if event.mail_item().remove_recipient(&from) {
                event.mail_item().add_recipient(&to)?;
            }
        }
        if let (Some(r), Some(d)) = (
            self.params.get("override_recipient"),
            self.params.get("override_domain"),
        ) {
            let present = event
                .mail_item()
                .recipients()
                .iter()
                .any(|x| x.address.eq_ignore_ascii_case(r));
            if present {
                event.set_routing_override(r, d, &[])?;
            }
        }
        Ok(())
    }

    fn on_routed_message(&mut self, event: &mut RoutedMessageEvent<'_>) -> AgentResult {
        self.seen.push("OnRoutedMessage");
        self.maybe_panic("OnRoutedMessage");
        self.log("OnRoutedMessage", &event.mail_item())
    }

    fn on_categorized_message(&mut self, event: &mut CategorizedMessageEvent<'_>) -> AgentResult {
        self.seen.push("OnCategorizedMessage");
        self.maybe_panic("OnCategorizedMessage");
        self.log("OnCategorizedMessage", &event.mail_item())?;
        if self.params.get("stamp") == Some("true") {
            let seen = self.seen.join(",");
            event.mail_item().add_header("X-Route-Probe", &seen)?;
        }
        Ok(())
    }
}

/// A delivery agent for the `PROBE` protocol: acks every recipient, or panics in the event named
/// by its `panic` parameter (fails with an error text holding CR LF for `fail`); logs each
/// event to `log` (`OnDeliverMailItem subject=...`); never returns from the event `hang` names.
/// Keyed by the item's subject:
/// `retry_subject` acks Retry, `defer_queue_subject` defers the queue for `defer_queue_ms`
/// (once), `fail_queue_subject` fails the queue, `submit_subject` submits a new message to
/// `submit_to`. `unregister` = true unregisters the connection after each item.
#[derive(Clone)]
pub struct DeliveryProbe {
    params: Parameters,
}

/// Whether the queue was deferred once already (the retry is delivered).
static DEFERRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl DeliveryProbe {
    fn visit(&self, event: &str, detail: &str) -> AgentResult {
        if let Some(path) = self.params.get("log") {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(format!("{event}{detail}\n").as_bytes())?;
        }
        if self.params.get("panic") == Some(event) {
            panic!("delivery probe panics in {event}");
        }
        if self.params.get("hang") == Some(event) {
            std::thread::sleep(Duration::from_secs(3600));
        }
        if self.params.get("fail") == Some(event) {
            // Text with control characters, as an agent may well produce.
            return Err(AgentError::msg(format!(
                "delivery probe fails in {event}\r\nwith a second line\tand a tab"
            )));
        }
        Ok(())
    }

    fn subject_is(&self, key: &str, subject: &str) -> bool {
        self.params.get(key) == Some(subject)
    }
}

#[agent]
impl DeliveryAgent for DeliveryProbe {
    const DELIVERY_PROTOCOL: &'static str = "PROBE";

    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            params: parameters.clone(),
        })
    }

    fn on_open_connection(&mut self, event: &mut OpenConnectionEvent<'_>) -> AgentResult {
        self.visit("OnOpenConnection", "")?;
        event.register_connection("probe", &SmtpResponse::new(250, "2.0.0", "ok")?)
    }

    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        let subject = event.mail_item().subject().unwrap_or_default();
        self.visit("OnDeliverMailItem", &format!(" subject={subject}"))?;
        if self.subject_is("retry_subject", &subject) {
            return event
                .ack_mail_item(AckStatus::Retry, &SmtpResponse::new(451, "4.4.0", "later")?);
        }
        if self.subject_is("defer_queue_subject", &subject)
            && !DEFERRED.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let ms = self.params.parse::<u64>("defer_queue_ms")?.unwrap_or(1000);
            return event.defer_queue(
                Duration::from_millis(ms),
                &SmtpResponse::new(451, "4.4.0", "the probe system is busy")?,
            );
        }
        if self.subject_is("fail_queue_subject", &subject) {
            return event.fail_queue(&SmtpResponse::new(
                554,
                "5.4.0",
                "the probe system is gone",
            )?);
        }
        if self.subject_is("submit_subject", &subject) {
            let to = self.params.require("submit_to")?.to_string();
            let mime = format!("From: probe@example.test\r\nTo: {to}\r\nSubject: submitted by the delivery probe\r\n\r\nhello\r\n");
            event.submit_message("probe@example.test", &[to.as_str()], mime.into_bytes())?;
        }
        event.ack_mail_item(
            AckStatus::Success,
            &SmtpResponse::new(250, "2.0.0", "probed")?,
        )?;
        if self.params.get("unregister") == Some("true") {
            event.unregister_connection()?;
        }
        Ok(())
    }

    fn on_close_connection(&mut self, _event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        self.visit("OnCloseConnection", "")
    }
}

export_agents!(
    "Tests.RouteProbeFactory" => RouteProbe,
    "Tests.DeliveryProbeFactory" => DeliveryProbe,
);
