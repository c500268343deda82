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
//! ## Async handlers
//!
//! A handler that waits on the network takes its event's async context, returns at once, and
//! completes from its own thread or runtime; the host holds none of its threads meanwhile.
//!
//! ```
//! use mta_agent_sdk::prelude::*;
//!
//! /// Refuses recipients a (slow) directory service does not know.
//! #[derive(Clone)]
//! pub struct Directory;
//!
//! #[agent]
//! impl SmtpReceiveAgent for Directory {
//!     fn create(_: &Parameters) -> Result<Self, AgentError> { Ok(Directory) }
//!
//!     fn on_rcpt_command(&mut self, event: &mut RcptCommandEvent<'_>) -> AgentResult {
//!         let recipient = event.recipient();
//!         let context = event.async_context()?;
//!         std::thread::spawn(move || {
//!             // Stands for an HTTP call or a database query.
//!             std::thread::sleep(std::time::Duration::from_millis(20));
//!             let known = recipient.starts_with("alice@");
//!             agent_debug!(context, "directory says {recipient}: {known}");
//!             context.complete(move |event| {
//!                 if !known {
//!                     event.reject(&SmtpResponse::new(550, "5.1.1", "No such user")?)?;
//!                 }
//!                 Ok(())
//!             });
//!         });
//!         Ok(())
//!     }
//! }
//!
//! // The test harness waits for the completion, as a host without async support would.
//! use mta_agent_sdk::testing::{self, TestHost};
//! let mut agent = testing::create::<Directory>(&[]).unwrap();
//! let mut host = TestHost::smtp("192.0.2.1:5000").with_arg("recipient", "bob@example.test");
//! testing::run(&mut agent, Event::OnRcptCommand, &mut host).unwrap();
//! assert_eq!(host.rejection().unwrap().code(), 550);
//! assert_eq!(host.log_lines()[0].1, "directory says bob@example.test: false");
//! ```
//!
//! A context dropped without completing (the task panicked, or forgot) completes as a fault:
//!
//! ```
//! # use mta_agent_sdk::prelude::*;
//! # #[derive(Clone)]
//! # pub struct Forgetful;
//! # #[agent]
//! # impl SmtpReceiveAgent for Forgetful {
//! #     fn create(_: &Parameters) -> Result<Self, AgentError> { Ok(Forgetful) }
//! fn on_noop_command(&mut self, event: &mut NoopCommandEvent<'_>) -> AgentResult {
//!     let context = event.async_context()?;
//!     std::thread::spawn(move || drop(context));
//!     Ok(())
//! }
//! # }
//! # use mta_agent_sdk::testing::{self, TestHost};
//! # let mut agent = testing::create::<Forgetful>(&[]).unwrap();
//! # let mut host = TestHost::smtp("192.0.2.1:5000");
//! let fault = testing::run(&mut agent, Event::OnNoopCommand, &mut host).unwrap_err();
//! assert_eq!(fault, "the agent dropped its async context without completing it");
//! ```
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
//! - **Logging goes to the host's log**, with the agent's name, service and event: see [`log`].
//! - **Handlers may be asynchronous**: `event.async_context()` (Exchange's
//!   `GetAgentAsyncContext`) lets a handler wait on the network without holding a host thread;
//!   see [`smtp_receive::AsyncContext`].
//! - **Parameters** from the `<parameter name=".." value=".."/>` children of the agent's entry
//!   reach [`create`](SmtpReceiveAgent::create) as [`Parameters`].

#![warn(missing_docs)]

// The macros name `::mta_agent_sdk`; the crate's own tests use them too.
#[cfg(test)]
extern crate self as mta_agent_sdk;

pub mod abi;
mod action;
mod async_context;
pub mod delivery;
mod error;
mod event;
mod event_source;
#[doc(hidden)]
pub mod export;
pub mod log;
mod mail_item;
mod parameters;
mod response;
pub mod routing;
pub mod smtp_receive;
pub mod testing;
pub mod version;

pub use abi::{AckStatus, LogLevel};
pub use action::Action;
pub use delivery::DeliveryAgent;
pub use error::{AgentError, AgentResult};
pub use event::{AgentClass, Event, EventSet};
pub use log::Logger;
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
        agent, agent_debug, agent_error, agent_info, agent_log, agent_trace, agent_warn,
        export_agents, AckStatus, AgentError, AgentResult, DisconnectReason, Event, LogLevel,
        Logger, MailItem, Parameters, Recipient, SmtpResponse, SmtpSession,
    };
}

#[doc(hidden)]
pub mod __private {
    pub use crate::export::{
        descriptor, dispatch_delivery, dispatch_routing, dispatch_smtp_receive, Exportable,
    };
    pub use abi_stable;
}
