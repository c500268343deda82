//! The three services of the transport pipeline and which agent classes each accepts.

use mta_agent_sdk::{AgentClass, Event};
use std::fmt;

/// A service of the transport pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Front End Transport: the stateless SMTP proxy at the edge.
    FrontEnd,
    /// Transport: receive, queue, categorize, route, send.
    Transport,
    /// Mailbox Transport: delivery into and submission from mailboxes.
    Mailbox,
}

impl Service {
    /// The name used on the command line, in logs and in status files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FrontEnd => "frontend",
            Self::Transport => "transport",
            Self::Mailbox => "mailbox",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names (and `hub`, Exchange's name for Transport).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "frontend" | "front-end" | "fet" => Some(Self::FrontEnd),
            "transport" | "hub" => Some(Self::Transport),
            "mailbox" => Some(Self::Mailbox),
            _ => None,
        }
    }

    /// Whether the service runs agents of `class` (Front End: SMTP receive only; Transport: all;
    /// Mailbox: none).
    pub fn accepts(self, class: AgentClass) -> bool {
        match self {
            Self::FrontEnd => class == AgentClass::SmtpReceive,
            Self::Transport => true,
            Self::Mailbox => false,
        }
    }

    /// Whether the service raises `event` to agents: the Front End never raises OnEndOfData,
    /// because it never holds a whole message.
    pub fn raises(self, event: Event) -> bool {
        self.accepts(event.class()) && !(self == Self::FrontEnd && event == Event::OnEndOfData)
    }

    /// What the service accepts, for error messages.
    pub fn accepted_classes(self) -> &'static str {
        match self {
            Self::FrontEnd => "the Front End Transport service runs SmtpReceiveAgent agents only",
            Self::Transport => {
                "the Transport service runs SmtpReceiveAgent, RoutingAgent and DeliveryAgent agents"
            }
            Self::Mailbox => "the Mailbox Transport service runs no agents",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
