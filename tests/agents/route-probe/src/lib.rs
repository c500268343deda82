//! The route probe: a routing test agent. It logs each categorizer event to `log` and, keyed by
//! the message's subject, takes routing actions: `delete_subject`, `defer_subject` (once, for
//! `defer_ms`), `panic_subject` (at OnResolvedMessage), `fork_subject` (keep the first recipient),
//! `expand_subject` with `add_recipient`; `override_recipient` with `override_domain` (at
//! OnResolvedMessage); `stamp` (a header listing the events seen, at OnCategorizedMessage).

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

    /// Panics when the `panic_event` parameter names this event.
    fn maybe_panic(&self, event: &str) {
        if self.params.get("panic_event") == Some(event) {
            panic!("route probe panics in {event}");
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

export_agents!(
    "Tests.RouteProbeFactory" => RouteProbe,
    "Tests.DeliveryProbeFactory" => DeliveryProbe,
);

/// A delivery agent for the `PROBE` protocol: acks every recipient, or panics in the event named
/// by its `panic` parameter; logs each event to `log`.
#[derive(Clone)]
pub struct DeliveryProbe {
    params: Parameters,
}

impl DeliveryProbe {
    fn visit(&self, event: &str) -> AgentResult {
        if let Some(path) = self.params.get("log") {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .write_all(format!("{event}\n").as_bytes())?;
        }
        if self.params.get("panic") == Some(event) {
            panic!("delivery probe panics in {event}");
        }
        if self.params.get("fail") == Some(event) {
            // Text with control characters, as an agent may well produce.
            return Err(AgentError::msg(format!(
                "delivery probe fails in {event}\r\nwith a second line\tand a tab"
            )));
        }
        Ok(())
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
        self.visit("OnOpenConnection")?;
        event.register_connection("probe", &SmtpResponse::new(250, "2.0.0", "ok")?)
    }

    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        self.visit("OnDeliverMailItem")?;
        event.ack_mail_item(
            AckStatus::Success,
            &SmtpResponse::new(250, "2.0.0", "probed")?,
        )
    }

    fn on_close_connection(&mut self, _event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        self.visit("OnCloseConnection")
    }
}
