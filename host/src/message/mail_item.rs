//! The mail item: a message, its envelope and the property bag agents share along the pipeline.

use super::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One envelope recipient, with its DSN parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecipient {
    /// The address.
    pub address: String,
    /// ORCPT (RFC 3461).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// NOTIFY (RFC 3461), comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// The routing domain a routing agent set for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_override: Option<String>,
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
    /// ENVID (RFC 3461).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// RET (RFC 3461): FULL or HDRS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// BODY: 7BIT, 8BITMIME or BINARYMIME.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_type: Option<String>,
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
    /// A delay notification was sent.
    #[serde(default)]
    pub delay_notified: bool,
    /// Agent faults while categorizing it.
    #[serde(default)]
    pub faults: u32,
}

impl MailItem {
    /// Whether `address` is a recipient (ignoring case).
    pub fn has_recipient(&self, address: &str) -> bool {
        self.envelope
            .recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(address))
    }
}
