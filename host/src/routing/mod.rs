//! Routing: where each recipient goes next.
//!
//! Recipients of our mailboxes go to Mailbox Transport; unknown users of our domains fail
//! (5.1.1); every other address, and any recipient a routing agent overrode, is matched against
//! the connectors by [`selection::select`].

pub mod address_space;
pub mod mx;
pub mod selection;
pub mod topology;

use crate::config::HostConfig;
use crate::message::EnvelopeRecipient;
use crate::organization::{Organization, RecipientKind};
use crate::smtp::reply;
use address_space::{AddressSpace, RouteAddress};
use mta_agent_sdk::SmtpResponse;
use selection::{Candidate, Selection};
use std::sync::Arc;
use topology::Topology;

/// The next hop of a recipient: what delivery queue it joins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NextHop {
    /// Mailbox Transport delivery.
    Mailbox,
    /// A Send connector, by name.
    Send(String),
    /// A Delivery Agent connector, by name.
    Agent(String),
    /// A Foreign connector, by name.
    Foreign(String),
}

impl NextHop {
    /// The name of its delivery queue (`delivery-send-Internet`).
    pub fn queue_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        match self {
            NextHop::Mailbox => "delivery-mailbox".into(),
            NextHop::Send(n) => format!("delivery-send-{}", clean(n)),
            NextHop::Agent(n) => format!("delivery-agent-{}", clean(n)),
            NextHop::Foreign(n) => format!("delivery-foreign-{}", clean(n)),
        }
    }

    /// A stable text form, kept with queued items.
    pub fn key(&self) -> String {
        match self {
            NextHop::Mailbox => "mailbox".into(),
            NextHop::Send(n) => format!("send:{n}"),
            NextHop::Agent(n) => format!("agent:{n}"),
            NextHop::Foreign(n) => format!("foreign:{n}"),
        }
    }

    /// Parses [`key`](Self::key).
    pub fn from_key(key: &str) -> Option<Self> {
        match key.split_once(':') {
            None if key == "mailbox" => Some(NextHop::Mailbox),
            Some(("send", n)) => Some(NextHop::Send(n.into())),
            Some(("agent", n)) => Some(NextHop::Agent(n.into())),
            Some(("foreign", n)) => Some(NextHop::Foreign(n.into())),
            _ => None,
        }
    }
}

/// Where one recipient goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// To this next hop.
    Hop(NextHop),
    /// No route for an SMTP address: the Unreachable queue.
    Unreachable,
    /// Cannot be delivered: a non-delivery report with this reason.
    Fail(SmtpResponse),
}

/// Routes recipients with the connectors of the host configuration.
pub struct Router {
    organization: Arc<Organization>,
    topology: Topology,
    candidates: Vec<Candidate>,
    hops: Vec<NextHop>,
}

impl Router {
    /// The router of `config`; connector names must be unique.
    pub fn new(config: &HostConfig, organization: Arc<Organization>) -> Result<Self, String> {
        let local = config
            .routing
            .server
            .clone()
            .unwrap_or_else(|| config.hostname.clone());
        let servers: Vec<(&str, &str)> = config
            .routing
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.site.as_str()))
            .collect();
        let links: Vec<((&str, &str), u32)> = config
            .routing
            .site_links
            .iter()
            .map(|l| ((l.sites[0].as_str(), l.sites[1].as_str()), l.cost))
            .collect();
        let topology = Topology::new(&local, &config.routing.site, &servers, &links);
        let sources = |s: &Option<Vec<String>>| s.clone().unwrap_or_else(|| vec![local.clone()]);
        // The three kinds of connector share what selection needs to know.
        let candidate = |name: &str,
                         spaces: &[AddressSpace],
                         max,
                         enabled,
                         scoped,
                         source: &Option<Vec<String>>| Candidate {
            name: name.to_string(),
            address_spaces: spaces.to_vec(),
            max_message_size: max,
            enabled,
            scoped,
            source_servers: sources(source),
        };
        let mut candidates = Vec::new();
        let mut hops = Vec::new();
        for c in &config.send_connectors {
            candidates.push(candidate(
                &c.name,
                &c.address_spaces,
                c.max_message_size,
                c.enabled,
                c.scoped,
                &c.source_servers,
            ));
            hops.push(NextHop::Send(c.name.clone()));
        }
        for c in &config.delivery_agent_connectors {
            candidates.push(candidate(
                &c.name,
                &c.address_spaces,
                c.max_message_size,
                c.enabled,
                c.scoped,
                &c.source_servers,
            ));
            hops.push(NextHop::Agent(c.name.clone()));
        }
        for c in &config.foreign_connectors {
            candidates.push(candidate(
                &c.name,
                &c.address_spaces,
                c.max_message_size,
                c.enabled,
                c.scoped,
                &c.source_servers,
            ));
            hops.push(NextHop::Foreign(c.name.clone()));
        }
        let mut names: Vec<String> = candidates
            .iter()
            .map(|c| c.name.to_ascii_lowercase())
            .collect();
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "two connectors are named {:?}; connector names must be unique",
                w[0]
            ));
        }
        Ok(Self {
            organization,
            topology,
            candidates,
            hops,
        })
    }

    /// Where `recipient` of a message of `size` bytes goes.
    pub fn route(&self, recipient: &EnvelopeRecipient, size: u64) -> Route {
        let address = match &recipient.routing_override {
            Some(domain) => RouteAddress::with_override(&recipient.address, domain),
            None => match self.organization.classify(&recipient.address) {
                RecipientKind::Local(_) => return Route::Hop(NextHop::Mailbox),
                RecipientKind::UnknownLocal => {
                    return Route::Fail(reply(
                        550,
                        "5.1.1",
                        "Recipient address rejected: user unknown",
                    ))
                }
                RecipientKind::Remote => RouteAddress::parse(&recipient.address),
            },
        };
        if address.is_smtp()
            && recipient.routing_override.is_some()
            && self.organization.accepts_domain(&address.domain)
        {
            return Route::Hop(NextHop::Mailbox);
        }
        match selection::select(&self.candidates, &self.topology, &address, size) {
            Selection::Connector(i) => Route::Hop(self.hops[i].clone()),
            Selection::Unreachable => Route::Unreachable,
            Selection::NoRoute => Route::Fail(reply(
                554,
                "5.4.4",
                "Unable to route: no connector for this address space",
            )),
            Selection::TooLarge => Route::Fail(reply(
                552,
                "5.3.4",
                "Message too large for every connector to its destination",
            )),
        }
    }
}
