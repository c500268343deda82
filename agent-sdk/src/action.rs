//! Actions an agent asked for, decoded from the boundary into SDK types.

use crate::abi::{AckStatus, FfiResponse, HostAction};
use crate::{AgentClass, Event, SmtpResponse};
use std::time::Duration;

/// One action an agent asked for during an event, with validated responses.
///
/// The host decodes every [`HostAction`] into this before acting on it, and the
/// [`testing`](crate::testing) harness records them so tests can assert on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Reject the command or connection.
    Reject(SmtpResponse),
    /// Close the connection.
    Disconnect,
    /// Accept and drop the message.
    Discard,
    /// Quarantine the message, with a reason.
    Quarantine(String),
    /// Replace the banner text.
    SetBanner(String),
    /// Do not offer STARTTLS.
    DisableStartTls,
    /// Retry the mail item later.
    Defer {
        /// How long to wait.
        delay: Duration,
        /// Why.
        response: Option<SmtpResponse>,
    },
    /// Drop the mail item silently.
    Delete,
    /// Keep these recipients; a copy carries the rest.
    Fork(Vec<String>),
    /// Route a recipient via another domain.
    SetRoutingOverride {
        /// The recipient.
        recipient: String,
        /// The routing domain (empty: clear).
        domain: String,
        /// Optional hosts.
        hosts: Vec<String>,
    },
    /// Take the delivery connection.
    RegisterConnection {
        /// Remote host.
        remote_host: String,
        /// Response.
        response: SmtpResponse,
    },
    /// Give the delivery connection back.
    UnregisterConnection,
    /// Ack the whole mail item.
    AckMailItem {
        /// Outcome.
        status: AckStatus,
        /// Response.
        response: SmtpResponse,
    },
    /// Ack one recipient.
    AckRecipient {
        /// Recipient.
        recipient: String,
        /// Outcome.
        status: AckStatus,
        /// Response.
        response: SmtpResponse,
    },
    /// Fail the queue.
    FailQueue(SmtpResponse),
    /// Retry the queue later.
    DeferQueue {
        /// How long to wait.
        delay: Duration,
        /// Why.
        response: SmtpResponse,
    },
    /// Submit a new message.
    SubmitMessage {
        /// Envelope sender.
        from: String,
        /// Envelope recipients.
        recipients: Vec<String>,
        /// Raw MIME.
        mime: Vec<u8>,
    },
    /// Replace the recipient of the RCPT command being handled (address rewriting, aliases).
    SetRecipient(String),
}

impl Action {
    /// Whether `event` allows this action, in the Front End service (`front_end`) or the
    /// Transport service. The host applies this rule, and so does the testing harness.
    pub fn is_allowed(&self, event: Event, front_end: bool) -> bool {
        use Event::*;
        let class = event.class();
        match self {
            Action::Reject(_) => {
                class == AgentClass::SmtpReceive && !matches!(event, OnReject | OnDisconnect)
            }
            Action::Disconnect => class == AgentClass::SmtpReceive && event != OnDisconnect,
            Action::Discard => matches!(event, OnEndOfHeaders | OnEndOfData),
            // The Front End stores nothing, so it has nowhere to keep a quarantined message.
            Action::Quarantine(_) => matches!(event, OnEndOfHeaders | OnEndOfData) && !front_end,
            Action::SetBanner(_) | Action::DisableStartTls => event == OnConnect,
            Action::Defer { .. } | Action::Delete | Action::Fork(_) => class == AgentClass::Routing,
            Action::SetRoutingOverride { .. } => event == OnResolvedMessage,
            Action::RegisterConnection { .. } => event == OnOpenConnection,
            Action::AckMailItem { .. } | Action::AckRecipient { .. } => event == OnDeliverMailItem,
            Action::UnregisterConnection | Action::FailQueue(_) | Action::DeferQueue { .. } => {
                class == AgentClass::Delivery
            }
            Action::SubmitMessage { .. } => !front_end,
            Action::SetRecipient(_) => event == OnRcptCommand,
        }
    }

    /// Decodes an action from the boundary, validating its responses again (a library built by
    /// someone else may send anything).
    pub fn from_host(action: HostAction) -> Result<Self, String> {
        let response = |r: &FfiResponse| r.to_response().map_err(|e| e.to_string());
        let strings = |v: abi_stable::std_types::RVec<abi_stable::std_types::RString>| {
            v.into_iter().map(|s| s.into_string()).collect::<Vec<_>>()
        };
        Ok(match action {
            HostAction::Reject(r) => {
                let r = response(&r)?;
                if r.is_success() || r.code() / 100 == 3 {
                    return Err(format!("a reject needs a 4xx or 5xx response, got {r}"));
                }
                Action::Reject(r)
            }
            HostAction::Disconnect => Action::Disconnect,
            HostAction::Discard => Action::Discard,
            HostAction::Quarantine(reason) => Action::Quarantine(reason.into_string()),
            HostAction::SetBanner(text) => {
                if text.contains(['\r', '\n']) {
                    return Err("a banner is one line".into());
                }
                Action::SetBanner(text.into_string())
            }
            HostAction::DisableStartTls => Action::DisableStartTls,
            HostAction::Defer {
                delay_ms,
                response: r,
            } => Action::Defer {
                delay: Duration::from_millis(delay_ms),
                response: r.into_option().as_ref().map(response).transpose()?,
            },
            HostAction::Delete => Action::Delete,
            HostAction::Fork(recipients) => Action::Fork(strings(recipients)),
            HostAction::SetRoutingOverride {
                recipient,
                domain,
                hosts,
            } => Action::SetRoutingOverride {
                recipient: recipient.into_string(),
                domain: domain.into_string(),
                hosts: strings(hosts),
            },
            HostAction::RegisterConnection {
                remote_host,
                response: r,
            } => Action::RegisterConnection {
                remote_host: remote_host.into_string(),
                response: response(&r)?,
            },
            HostAction::UnregisterConnection => Action::UnregisterConnection,
            HostAction::AckMailItem {
                status,
                response: r,
            } => Action::AckMailItem {
                status,
                response: response(&r)?,
            },
            HostAction::AckRecipient {
                recipient,
                status,
                response: r,
            } => Action::AckRecipient {
                recipient: recipient.into_string(),
                status,
                response: response(&r)?,
            },
            HostAction::FailQueue(r) => Action::FailQueue(response(&r)?),
            HostAction::DeferQueue {
                delay_ms,
                response: r,
            } => Action::DeferQueue {
                delay: Duration::from_millis(delay_ms),
                response: response(&r)?,
            },
            HostAction::SubmitMessage {
                from,
                recipients,
                mime,
            } => Action::SubmitMessage {
                from: from.into_string(),
                recipients: strings(recipients),
                mime: mime.into_vec(),
            },
            HostAction::SetRecipient(address) => {
                let address = address.trim();
                if address.is_empty() || address.contains(['\r', '\n', '<', '>']) {
                    return Err(format!("{address:?} is not a recipient address"));
                }
                Action::SetRecipient(address.to_string())
            }
        })
    }
}
