//! The mail item: a message, its envelope and the property bag agents share along the pipeline.

use super::parameters::{Body, Notify, Orcpt, Ret};
use super::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One envelope recipient, with its DSN parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecipient {
    /// The address.
    pub address: String,
    /// ORCPT (RFC 3461), decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<Orcpt>,
    /// NOTIFY (RFC 3461).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    /// The routing domain a routing agent set for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_override: Option<String>,
    /// The last answer about this recipient while it waits for a retry (for the report if it
    /// expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<LastAttempt>,
}

/// A remote answer kept with a waiting recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastAttempt {
    /// The reply code.
    pub code: u16,
    /// The enhanced status code.
    pub enhanced: String,
    /// The reply text.
    pub text: String,
    /// The host that answered, if it was a remote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_mta: Option<String>,
}

impl EnvelopeRecipient {
    /// A recipient without DSN parameters.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            ..Self::default()
        }
    }
}

/// The envelope: MAIL FROM and RCPT TO with their parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse path; empty for the null sender.
    pub from: String,
    /// The recipients.
    pub recipients: Vec<EnvelopeRecipient>,
    /// ENVID (RFC 3461), decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// RET (RFC 3461).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// BODY (RFC 6152).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_type: Option<Body>,
    /// SMTPUTF8 was requested.
    #[serde(default)]
    pub smtputf8: bool,
    /// SIZE declared by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A message travelling through the pipeline.
#[derive(Clone, Debug, Default)]
pub struct MailItem {
    /// Queue id, unique in this node.
    pub id: String,
    /// Envelope.
    pub envelope: Envelope,
    /// The message.
    pub message: Message,
    /// Properties agents share along the pipeline.
    pub properties: BTreeMap<String, String>,
    /// A quarantine reason set by an agent.
    pub quarantine: Option<String>,
    /// The host's own bookkeeping, kept with the item in the queues.
    pub trace: Trace,
}

/// What the host records about an item on its way (never shown to agents).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// When the Transport service accepted it, in ms since the Unix epoch.
    #[serde(default)]
    pub received_ms: u64,
    /// The next hop of a delivery queue it waits in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    /// The recipient domain of that queue, for a Send connector that delivers by MX (one queue
    /// per destination domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_domain: Option<String>,
    /// When it is to be tried next, in ms since the Unix epoch (kept across restarts).
    #[serde(default)]
    pub next_attempt_ms: u64,
    /// A delay notification was sent.
    #[serde(default)]
    pub delay_notified: bool,
    /// Agent faults while categorizing it.
    #[serde(default)]
    pub faults: u32,
    /// Why the item is parked (Poison: the agent faults; Unreachable: the recipients without a
    /// route), for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether someone vouched for the sender: the client authenticated or was a trusted
    /// server, or the message came from this host (a directory, an agent, a mailbox). Only then
    /// may a failure report carry the whole message back (RET=FULL): otherwise anyone could
    /// make this host send any content to any address by forging the sender.
    #[serde(default)]
    pub vouched: bool,
    /// Where a message that did not come over SMTP came from (PICKUP, REPLAY, AGENT, DSN),
    /// for its RECEIVE tracking record once it is queued; SMTP sessions track their own.
    #[serde(skip)]
    pub origin: Option<&'static str>,
}

impl MailItem {
    /// A new message an agent submitted, its addresses checked like any client's.
    pub fn submitted(from: &str, recipients: &[String], mime: &[u8]) -> Result<Self, String> {
        use crate::smtp::address::check_mailbox;
        if !from.is_empty() {
            check_mailbox(from).map_err(|e| format!("sender {from:?}: {e}"))?;
        }
        if recipients.is_empty() {
            return Err("a submitted message needs a recipient".into());
        }
        let mut item = MailItem::default();
        for r in recipients {
            check_mailbox(r).map_err(|e| format!("recipient {r:?}: {e}"))?;
            item.envelope.recipients.push(EnvelopeRecipient::new(r));
        }
        item.envelope.from = from.to_string();
        item.envelope.smtputf8 = !from.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        item.message = Message::parse(mime);
        item.trace.vouched = true;
        item.trace.origin = Some("AGENT");
        Ok(item)
    }

    /// Whether `address` is a recipient (ignoring case).
    pub fn has_recipient(&self, address: &str) -> bool {
        self.envelope
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(address))
    }
}
