//! Routing agents: handlers for the categorizer's events, one instance per mail item.

use crate::abi::{EventHost, FfiResponse, HostAction};
use crate::event_source::Source;
use crate::mail_item::MailItem;
use crate::{AgentError, AgentResult, EventSet, Parameters, SmtpResponse};
use abi_stable::std_types::{ROption, RString};
use std::marker::PhantomData;
use std::time::Duration;

/// An agent for the categorizer's events (Exchange's `RoutingAgent`).
///
/// Events come in this order for each mail item: OnSubmittedMessage, OnResolvedMessage (routing
/// overrides may be set from here), OnRoutedMessage, OnCategorizedMessage. An `Err` or a panic
/// defers the mail item; a mail item that faults agents repeatedly goes to the Poison queue.
pub trait RoutingAgent: Clone + Send + Sync + 'static {
    /// The events this agent handles. Written by `#[agent]`: do not write it by hand.
    const EVENTS: EventSet;

    /// Builds the agent from its `<parameter>` elements when the host loads the pipeline.
    fn create(parameters: &Parameters) -> Result<Self, AgentError>;

    /// The mail item entered the Submission queue.
    fn on_submitted_message(&mut self, event: &mut SubmittedMessageEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// Recipients are resolved; routing overrides may be set.
    fn on_resolved_message(&mut self, event: &mut ResolvedMessageEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// Next hops are chosen.
    fn on_routed_message(&mut self, event: &mut RoutedMessageEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The categorizer is done.
    fn on_categorized_message(&mut self, event: &mut CategorizedMessageEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
}

/// Marker types naming each categorizer event.
pub mod kind {
    /// OnSubmittedMessage.
    #[derive(Debug)]
    pub enum Submitted {}
    /// OnResolvedMessage.
    #[derive(Debug)]
    pub enum Resolved {}
    /// OnRoutedMessage.
    #[derive(Debug)]
    pub enum Routed {}
    /// OnCategorizedMessage.
    #[derive(Debug)]
    pub enum Categorized {}
}

/// One categorizer event. Use the aliases ([`ResolvedMessageEvent`], ...).
pub struct RoutingEvent<'a, K> {
    source: Source<'a>,
    _kind: PhantomData<fn() -> K>,
}

/// OnSubmittedMessage.
pub type SubmittedMessageEvent<'a> = RoutingEvent<'a, kind::Submitted>;
/// OnResolvedMessage.
pub type ResolvedMessageEvent<'a> = RoutingEvent<'a, kind::Resolved>;
/// OnRoutedMessage.
pub type RoutedMessageEvent<'a> = RoutingEvent<'a, kind::Routed>;
/// OnCategorizedMessage.
pub type CategorizedMessageEvent<'a> = RoutingEvent<'a, kind::Categorized>;

impl<'a, K> RoutingEvent<'a, K> {
    pub(crate) fn new(host: &'a mut (dyn EventHost + 'a)) -> Self {
        Self {
            source: Source::new(host),
            _kind: PhantomData,
        }
    }

    /// This agent's log: lines go to the host's log with the agent's name, the service and
    /// this event. Usually through the macros: `agent_info!(event, "...")`.
    pub fn logger(&self) -> crate::Logger {
        self.source.logger()
    }

    /// Makes this handler asynchronous (Exchange's `GetAgentAsyncContext`): return `Ok(())`
    /// right after, do the work on your own thread or runtime, and call
    /// [`AsyncContext::complete`] when it is done. The host holds none of its threads
    /// meanwhile; the time limit runs until the completion. Once per handler.
    pub fn async_context(&mut self) -> crate::AgentResult<AsyncContext<K>>
    where
        K: 'static,
    {
        crate::async_context::Pending::begin(&mut self.source).map(AsyncContext::new)
    }

    /// The mail item being categorized.
    pub fn mail_item(&mut self) -> MailItem<'_> {
        MailItem::new(&mut *self.source.host)
    }

    /// Puts the mail item back for `delay`; it goes through the categorizer again then.
    pub fn defer(&mut self, delay: Duration, reason: Option<&SmtpResponse>) -> AgentResult {
        self.source.act(HostAction::Defer {
            delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
            response: reason
                .map(FfiResponse::from)
                .map(ROption::RSome)
                .unwrap_or(ROption::RNone),
        })
    }

    /// Drops the mail item silently: no delivery, no DSN. The host logs it.
    pub fn delete(&mut self) -> AgentResult {
        self.source.act(HostAction::Delete)
    }

    /// Splits `recipients` off: this mail item keeps them, a copy carries the others and goes
    /// through the categorizer after this one.
    pub fn fork(&mut self, recipients: &[&str]) -> AgentResult {
        self.source.act(HostAction::Fork(
            recipients.iter().map(|r| RString::from(*r)).collect(),
        ))
    }

    /// Submits a brand-new message into the Submission queue.
    pub fn submit_message(
        &mut self,
        from: &str,
        recipients: &[&str],
        mime: Vec<u8>,
    ) -> AgentResult {
        self.source.submit(from, recipients, mime)
    }
}

impl ResolvedMessageEvent<'_> {
    /// Sends `recipient` through the route of `routing_domain` (for example `MOBILE` address
    /// space), optionally to these `hosts`. An empty domain removes the override.
    pub fn set_routing_override(
        &mut self,
        recipient: &str,
        routing_domain: &str,
        hosts: &[&str],
    ) -> AgentResult {
        self.source.act(HostAction::SetRoutingOverride {
            recipient: recipient.into(),
            domain: routing_domain.into(),
            hosts: hosts.iter().map(|h| RString::from(*h)).collect(),
        })
    }

    /// The routing override of `recipient`, if one is set.
    pub fn routing_override(&mut self, recipient: &str) -> Option<String> {
        self.mail_item()
            .recipients()
            .into_iter()
            .find(|r| r.address.eq_ignore_ascii_case(recipient))
            .and_then(|r| r.routing_override)
    }
}

crate::async_context::async_context!(RoutingEvent);
