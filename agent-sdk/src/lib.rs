//! # Writing transport agents for mta
//!
//! A transport agent is a Rust `cdylib` that the `mta` host loads at run time and calls at points
//! of the transport pipeline. There are three classes, as in Exchange:
//!
//! | class | trait | events | one instance per |
//! |---|---|---|---|
//! | SMTP receive | [`SmtpReceiveAgent`] | OnConnect … OnDisconnect (16) | SMTP session |
//! | routing | [`RoutingAgent`] | OnSubmittedMessage … OnCategorizedMessage (4) | mail item |
//! | delivery | [`DeliveryAgent`] | OnOpenConnection, OnDeliverMailItem, OnCloseConnection | delivery connection |
//!
//! An agent is one impl block and one export line. This is a complete agent library:
//!
//! ```
//! use mta_agent_sdk::prelude::*;
//!
//! /// Rejects mail from one sender domain, given as the `domain` parameter.
//! #[derive(Clone)]
//! pub struct BlockDomain {
//!     domain: String,
//! }
//!
//! #[agent]
//! impl SmtpReceiveAgent for BlockDomain {
//!     fn create(parameters: &Parameters) -> Result<Self, AgentError> {
//!         Ok(Self { domain: parameters.require("domain")?.to_ascii_lowercase() })
//!     }
//!
//!     fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
//!         if event.from().to_ascii_lowercase().ends_with(&format!("@{}", self.domain)) {
//!             event.reject(&SmtpResponse::new(550, "5.7.1", "Sender domain refused")?)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! export_agents!("Example.BlockDomainFactory" => BlockDomain);
//!
//! // The same agent, unit-tested without a host:
//! use mta_agent_sdk::testing::{self, TestHost};
//! let mut agent = testing::create::<BlockDomain>(&[("domain", "spam.test")]).unwrap();
//! let mut host = TestHost::smtp("192.0.2.1:5000").with_arg("from", "x@spam.test");
//! testing::run(&mut agent, Event::OnMailCommand, &mut host).unwrap();
//! assert_eq!(host.rejection().unwrap().code(), 550);
//! assert_eq!(BlockDomain::EVENTS.iter().collect::<Vec<_>>(), [Event::OnMailCommand]);
//! ```
//!
//! Build it with `crate-type = ["cdylib"]` and register the library in `agents.config` (or with
//! `mta agent install`); the running host loads it without a restart. See `docs/writing-an-agent.md`
//! in the repository for the whole walk-through.
//!
//! ## What the SDK guarantees
//! - **Declared events cannot drift from the code.** `#[agent]` reads which handlers the impl block
//!   overrides and writes [`SmtpReceiveAgent::EVENTS`]; the host calls nothing else.
//! - **A panic never crosses into the host.** The export glue catches it and reports a fault: the
//!   host fails only what the agent was doing, with a temporary error, and keeps serving.
//! - **A library built against an incompatible SDK is refused** when it loads, in one line naming
//!   both versions (and, for a layout difference, the first type that differs). Which versions
//!   load together is the version rule, written in the crate's README ("The version rule") and
//!   implemented by [`version::compatible`]: below 1.0, the same minor version, any patch.
//! - **Parameters** from the `<parameter name=".." value=".."/>` children of the agent's entry
//!   reach [`create`](SmtpReceiveAgent::create) as [`Parameters`].

#![warn(missing_docs)]

pub mod abi;
mod action;
pub mod delivery;
mod error;
mod event;
mod event_source;
#[doc(hidden)]
pub mod export;
mod mail_item;
mod parameters;
mod response;
pub mod routing;
pub mod smtp_receive;
pub mod testing;
pub mod version;

pub use abi::AckStatus;
pub use action::Action;
pub use delivery::DeliveryAgent;
pub use error::{AgentError, AgentResult};
pub use event::{AgentClass, Event, EventSet};
pub use mail_item::{MailItem, Recipient};
pub use parameters::Parameters;
pub use response::{InvalidResponse, SmtpResponse};
pub use routing::RoutingAgent;
pub use smtp_receive::{DisconnectReason, SmtpReceiveAgent, SmtpSession};

/// Marks an impl block of [`SmtpReceiveAgent`], [`RoutingAgent`] or [`DeliveryAgent`]: records the
/// handlers it overrides as the agent's `EVENTS` and makes the type exportable.
pub use mta_agent_sdk_macros::agent;

/// Exports the library's agents: `export_agents!("Factory.Name" => AgentType, ...)`. Write it
/// once per library; each name is what `classFactory` refers to.
pub use mta_agent_sdk_macros::export_agents;

/// Everything an agent usually needs, in one `use`.
pub mod prelude {
    pub use crate::delivery::{
        CloseConnectionEvent, DeliverMailItemEvent, DeliveryAgent, OpenConnectionEvent,
    };
    pub use crate::routing::{
        CategorizedMessageEvent, ResolvedMessageEvent, RoutedMessageEvent, RoutingAgent,
        SubmittedMessageEvent,
    };
    pub use crate::smtp_receive::{
        AuthCommandEvent, ConnectEvent, DataCommandEvent, DisconnectEvent, EhloCommandEvent,
        EndOfAuthenticationEvent, EndOfDataEvent, EndOfHeadersEvent, HeloCommandEvent,
        HelpCommandEvent, MailCommandEvent, NoopCommandEvent, RcptCommandEvent, RejectEvent,
        RsetCommandEvent, SmtpReceiveAgent, StartTlsCommandEvent,
    };
    pub use crate::{
        agent, export_agents, AckStatus, AgentError, AgentResult, DisconnectReason, Event,
        MailItem, Parameters, Recipient, SmtpResponse, SmtpSession,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        descriptor, dispatch_delivery, dispatch_routing, dispatch_smtp_receive, Exportable,
    };
    pub use abi_stable;
}
