//! Delivery agents: deliver the queue of a Delivery Agent connector to a non-SMTP system.
//!
//! One instance serves one delivery connection: OnOpenConnection, then OnDeliverMailItem for each
//! mail item (up to the connector's messages-per-connection), then OnCloseConnection.

use crate::abi::{AckStatus, EventHost, FfiResponse, HostAction};
use crate::event_source::Source;
use crate::mail_item::MailItem;
use crate::{AgentError, AgentResult, EventSet, Parameters, SmtpResponse};
use std::marker::PhantomData;
use std::time::Duration;

pub use crate::abi::AckStatus as Ack;

/// An agent that delivers to a non-SMTP system (Exchange's `DeliveryAgent`).
///
/// Its factory serves one delivery protocol ([`DELIVERY_PROTOCOL`](Self::DELIVERY_PROTOCOL)):
/// the queues of Delivery Agent connectors whose `DeliveryProtocol` is the same. No two installed
/// delivery agents may claim the same protocol.
///
/// If no agent registers the connection, the queue retries ("451 4.4.0 No DeliveryAgent handled
/// the queue"); a mail item left without an ack is deferred.
pub trait DeliveryAgent: Clone + Send + Sync + 'static {
    /// The events this agent handles. Written by `#[agent]`: do not write it by hand.
    const EVENTS: EventSet;

    /// The delivery protocol served, such as `MOBILE`. Must not be empty.
    const DELIVERY_PROTOCOL: &'static str;

    /// Builds the agent from its `<parameter>` elements when the host loads the pipeline.
    fn create(parameters: &Parameters) -> Result<Self, AgentError>;

    /// A queue opens a connection to its next hop: register it, or fail or defer the queue.
    fn on_open_connection(&mut self, event: &mut OpenConnectionEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// Deliver one mail item and acknowledge it, whole or per recipient.
    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The connection closes.
    fn on_close_connection(&mut self, event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
}

/// Marker types naming each delivery event.
pub mod kind {
    /// OnOpenConnection.
    #[derive(Debug)]
    pub enum OpenConnection {}
    /// OnDeliverMailItem.
    #[derive(Debug)]
    pub enum DeliverMailItem {}
    /// OnCloseConnection.
    #[derive(Debug)]
    pub enum CloseConnection {}
}

/// One delivery event. Use the aliases ([`DeliverMailItemEvent`], ...).
pub struct DeliveryEvent<'a, K> {
    source: Source<'a>,
    _kind: PhantomData<fn() -> K>,
}

/// OnOpenConnection.
pub type OpenConnectionEvent<'a> = DeliveryEvent<'a, kind::OpenConnection>;
/// OnDeliverMailItem.
pub type DeliverMailItemEvent<'a> = DeliveryEvent<'a, kind::DeliverMailItem>;
/// OnCloseConnection.
pub type CloseConnectionEvent<'a> = DeliveryEvent<'a, kind::CloseConnection>;

impl<'a, K> DeliveryEvent<'a, K> {
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

    /// The next-hop domain of the queue (the connector's address space, such as `MOBILE`).
    pub fn next_hop_domain(&self) -> String {
        self.source.arg("next_hop_domain").unwrap_or_default()
    }

    /// Gives the connection back; the queue stops delivering through this agent.
    pub fn unregister_connection(&mut self) -> AgentResult {
        self.source.act(HostAction::UnregisterConnection)
    }

    /// Fails every mail item of the queue: each sender gets a non-delivery report.
    pub fn fail_queue(&mut self, response: &SmtpResponse) -> AgentResult {
        self.source.act(HostAction::FailQueue(response.into()))
    }

    /// Retries the whole queue after `delay`.
    pub fn defer_queue(&mut self, delay: Duration, response: &SmtpResponse) -> AgentResult {
        self.source.act(HostAction::DeferQueue {
            delay_ms: delay.as_millis().try_into().unwrap_or(u64::MAX),
            response: response.into(),
        })
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

impl OpenConnectionEvent<'_> {
    /// Takes the connection: this agent delivers the queue's mail items to `remote_host`.
    pub fn register_connection(
        &mut self,
        remote_host: &str,
        response: &SmtpResponse,
    ) -> AgentResult {
        self.source.act(HostAction::RegisterConnection {
            remote_host: remote_host.into(),
            response: response.into(),
        })
    }
}

impl DeliverMailItemEvent<'_> {
    /// The mail item to deliver.
    pub fn mail_item(&mut self) -> MailItem<'_> {
        MailItem::new(&mut *self.source.host)
    }

    /// Acknowledges the whole mail item: every recipient not acked yet gets this outcome.
    pub fn ack_mail_item(&mut self, status: AckStatus, response: &SmtpResponse) -> AgentResult {
        self.source.act(HostAction::AckMailItem {
            status,
            response: FfiResponse::from(response),
        })
    }

    /// Acknowledges one recipient.
    pub fn ack_recipient(
        &mut self,
        recipient: &str,
        status: AckStatus,
        response: &SmtpResponse,
    ) -> AgentResult {
        if !self
            .mail_item()
            .recipients()
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(recipient))
        {
            return Err(AgentError::msg(format!(
                "{recipient} is not a recipient of this mail item"
            )));
        }
        self.source.act(HostAction::AckRecipient {
            recipient: recipient.into(),
            status,
            response: FfiResponse::from(response),
        })
    }
}

crate::async_context::async_context!(DeliveryEvent);
