//! The stable boundary between the host and agent libraries.
//!
//! Agent authors never touch this module: `#[agent]` and [`export_agents!`](crate::export_agents)
//! write the library side, and the host is the only other user. Everything here is checked by
//! `abi_stable` when a library loads: a library whose version the rule of [`crate::version`]
//! refuses, or whose layout differs, is refused with both versions. Below 1.0 any change to this
//! module is a new minor version of the SDK; patch versions leave it alone.
//!
//! Shape of the boundary:
//! - the library exports one root module, [`AgentLibraryRef`], listing its [`FactoryDescriptor`]s;
//! - the host builds an [`AgentFactory`] per pipeline entry from the entry's parameters, and from
//!   it an [`AgentInstance`] per session, mail item or delivery connection;
//! - for each event the host passes an [`EventHost`] object: the callbacks through which the agent
//!   reads the session and mail item and asks for actions. Nothing else is shared.
//! - through the [`EventHost`] an agent may get a [`LogSink`] (its log lines, into the host's log)
//!   and a [`Completion`] (Exchange's `GetAgentAsyncContext`: the handler returns at once and the
//!   agent hands the host a [`Continuation`] later, from its own thread).
//!
//! ## Growing the boundary without breaking agents
//! Every trait object's vtable and the root module are prefix types: a later SDK appends methods
//! after the one marked `#[sabi(last_prefix_field)]`, never moves or changes one before. Some are
//! provided by the library (the root module, [`AgentFactory`], [`AgentInstance`],
//! [`Continuation`]), others by the host ([`EventHost`], [`LogSink`], [`Completion`]), so a
//! growth may leave either side with the longer one; the host accepts a library whose layout is
//! compatible in either direction (abi_stable alone accepts only libraries at least as new as the
//! host). An agent built against an older SDK sees only the prefix it knows, so it loads in a
//! newer host (`tests/agent_abi_growth.rs` builds the probe against the SDK before
//! [`EventHost::logger`] and [`EventHost::begin_async`] were appended). A method appended to a
//! host-provided vtable has a default body: a newer agent in an older host, whose vtable lacks
//! the method, gets that default (no logger, no async context) and the SDK falls back (logging
//! is dropped; an async handler waits on the host's thread, as a synchronous one would).

// `#[sabi_trait]` implements abi_stable's traits inside a generated constant, and casts the
// receiver of a by-value method (`Continuation::resume`) to the type it already has.
#![allow(non_local_definitions, clippy::unnecessary_cast)]

use crate::event::{AgentClass, Event, EventSet};
use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RStr, RString, RVec, Tuple2},
    StableAbi,
};

/// The root module every agent library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = AgentLibraryRef)))]
#[sabi(missing_field(panic))]
pub struct AgentLibrary {
    /// The factories of this library.
    #[sabi(last_prefix_field)]
    pub factories: extern "C" fn() -> RVec<FactoryDescriptor>,
}

impl RootModule for AgentLibraryRef {
    declare_root_module_statics! {AgentLibraryRef}
    const BASE_NAME: &'static str = "mta_agent_library";
    const NAME: &'static str = "mta_agent_library";
    /// The SDK's own version: what the host compares with the version a library was built with.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// One factory of an agent library: what `classFactory` names.
#[repr(C)]
#[derive(StableAbi)]
pub struct FactoryDescriptor {
    /// The name matched against `classFactory`.
    pub name: RStr<'static>,
    /// The agent class it creates, checked against `baseType`.
    pub class: AgentClass,
    /// For delivery agents, the delivery protocol served (`MOBILE`); empty otherwise.
    pub delivery_protocol: RStr<'static>,
    /// The events the agent's impl block overrides.
    pub events: EventSet,
    /// Builds the factory from the entry's parameters (an error is a configuration error).
    pub new_factory: extern "C" fn(
        parameters: RVec<Tuple2<RString, RString>>,
    ) -> RResult<AgentFactoryBox, RString>,
}

/// A factory as the host holds it.
pub type AgentFactoryBox = AgentFactory_TO<'static, RBox<()>>;
/// An agent instance as the host holds it.
pub type AgentInstanceBox = AgentInstance_TO<'static, RBox<()>>;
/// The host callbacks for one event.
pub type EventHostRef<'a> = EventHost_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// Creates agent instances; dropped (closed) when the last pipeline using it is dropped.
#[sabi_trait]
pub trait AgentFactory: Send + Sync {
    /// A new instance for one session, mail item or delivery connection.
    #[sabi(last_prefix_field)]
    fn create_agent(&self) -> RResult<AgentInstanceBox, RString>;
}

/// One agent instance.
#[sabi_trait]
pub trait AgentInstance: Send {
    /// Handles one event. An `RErr` is a fault: the agent returned an error or panicked.
    #[sabi(last_prefix_field)]
    fn handle(&mut self, event: Event, host: EventHostRef<'_>) -> RResult<(), RString>;
}

/// An SMTP response crossing the boundary, already validated by the SDK.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct FfiResponse {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code.
    pub enhanced: RString,
    /// Text, lines separated by `\n`.
    pub text: RString,
}

/// A recipient of a mail item.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct FfiRecipient {
    /// The address.
    pub address: RString,
    /// The DSN ORCPT parameter, empty when absent.
    pub orcpt: RString,
    /// The DSN NOTIFY parameter, empty when absent.
    pub notify: RString,
    /// The routing domain set by a routing override, empty when none.
    pub routing_override: RString,
}

/// The outcome an agent gives a delivery.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Delivered.
    Success = 0,
    /// Try again later.
    Retry = 1,
    /// Failed for good: the sender gets a non-delivery report.
    Fail = 2,
}

/// Which property bag.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertyScope {
    /// The SMTP session's bag, shared by the agents of one session.
    Session = 0,
    /// The mail item's bag, carried along the pipeline with the message.
    MailItem = 1,
}

/// Everything an agent can ask the host to do. Each event accepts some of them; the SDK only
/// offers an event the actions it accepts, and the host refuses the others.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Answer the command (or the connection) with this 4xx/5xx response.
    Reject(FfiResponse),
    /// Close the connection.
    Disconnect,
    /// Accept the message and drop it.
    Discard,
    /// Keep the message out of delivery, for review, with a reason.
    Quarantine(RString),
    /// Replace the text of the greeting banner.
    SetBanner(RString),
    /// Do not offer STARTTLS in this session.
    DisableStartTls,
    /// Retry the mail item later.
    Defer {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// Optional reason.
        response: ROption<FfiResponse>,
    },
    /// Drop the mail item silently.
    Delete,
    /// Split these recipients off into a copy processed after this one.
    Fork(RVec<RString>),
    /// Route a recipient through another domain's route (empty domain clears it).
    SetRoutingOverride {
        /// The recipient.
        recipient: RString,
        /// The routing domain.
        domain: RString,
        /// Optional hosts for that domain.
        hosts: RVec<RString>,
    },
    /// Accept the delivery queue's connection on behalf of a remote host.
    RegisterConnection {
        /// The remote host.
        remote_host: RString,
        /// The response describing the connection.
        response: FfiResponse,
    },
    /// Give the connection back.
    UnregisterConnection,
    /// Acknowledge the whole mail item.
    AckMailItem {
        /// Outcome.
        status: AckStatus,
        /// Response recorded with it.
        response: FfiResponse,
    },
    /// Acknowledge one recipient.
    AckRecipient {
        /// The recipient.
        recipient: RString,
        /// Outcome.
        status: AckStatus,
        /// Response recorded with it.
        response: FfiResponse,
    },
    /// Fail every item of the queue.
    FailQueue(FfiResponse),
    /// Retry the whole queue later.
    DeferQueue {
        /// Delay in milliseconds.
        delay_ms: u64,
        /// Reason.
        response: FfiResponse,
    },
    /// Submit a brand-new message into the Submission queue.
    SubmitMessage {
        /// Envelope sender.
        from: RString,
        /// Envelope recipients.
        recipients: RVec<RString>,
        /// The message, as raw MIME.
        mime: RVec<u8>,
    },
    /// Replace the recipient of the RCPT command being handled.
    SetRecipient(RString),
}

/// The session as agents see it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default, PartialEq, Eq)]
pub struct FfiSession {
    /// Unique id of the session in this host.
    pub id: u64,
    /// The client's `ip:port`.
    pub remote_endpoint: RString,
    /// Our `ip:port`.
    pub local_endpoint: RString,
    /// The HELO/EHLO domain, empty before it.
    pub helo_domain: RString,
    /// Whether the client's connection runs over TLS (behind a Front End: the client's own).
    pub tls: bool,
    /// The authenticated identity, empty when anonymous.
    pub authenticated_as: RString,
    /// Whether the client is outside the organisation (not a trusted range, not authenticated).
    pub external: bool,
    /// The service receiving: `frontend` or `transport`.
    pub service: RString,
}

/// The host callbacks for one event. Methods that need something the event lacks (a mail item
/// at OnConnect) answer empty values or errors; the SDK never offers them there.
#[sabi_trait]
pub trait EventHost {
    /// The SMTP session, for SMTP receive events.
    fn session(&self) -> ROption<FfiSession>;
    /// A named argument of the event (`domain`, `from`, `recipient`, `reason`, ...).
    fn arg(&self, name: RStr<'_>) -> ROption<RString>;
    /// Asks for an action.
    fn act(&mut self, action: HostAction) -> RResult<(), RString>;
    /// A property of the session or mail item bag.
    fn property(&self, scope: PropertyScope, key: RStr<'_>) -> ROption<RString>;
    /// Sets a property (an empty value removes it).
    fn set_property(&mut self, scope: PropertyScope, key: RStr<'_>, value: RStr<'_>);
    /// Whether this event carries a mail item.
    fn has_mail_item(&self) -> bool;
    /// The envelope sender (empty for the null sender).
    fn mail_from(&self) -> RString;
    /// Replaces the envelope sender.
    fn set_mail_from(&mut self, address: RStr<'_>) -> RResult<(), RString>;
    /// The envelope recipients.
    fn recipients(&self) -> RVec<FfiRecipient>;
    /// Adds a recipient.
    fn add_recipient(&mut self, address: RStr<'_>) -> RResult<(), RString>;
    /// Removes a recipient; false when it was not there.
    fn remove_recipient(&mut self, address: RStr<'_>) -> bool;
    /// The header fields in order, values unfolded.
    fn headers(&self) -> RVec<Tuple2<RString, RString>>;
    /// Appends a header field.
    fn add_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString>;
    /// Replaces the first field of this name and removes the others, or appends it.
    fn set_header(&mut self, name: RStr<'_>, value: RStr<'_>) -> RResult<(), RString>;
    /// Removes every field of this name; returns how many.
    fn remove_header(&mut self, name: RStr<'_>) -> u32;
    /// The body (everything after the header block).
    fn body(&self) -> RVec<u8>;
    /// Replaces the body.
    fn set_body(&mut self, body: RVec<u8>) -> RResult<(), RString>;
    /// The whole message, header block and body.
    fn mime(&self) -> RVec<u8>;
    /// Replaces the whole message.
    #[sabi(last_prefix_field)]
    fn set_mime(&mut self, mime: RVec<u8>) -> RResult<(), RString>;

    // Appended after the first 0.1 release: hosts built before answer with these defaults.

    /// The log of the agent being called: its lines go to the host's log with the agent's name,
    /// service and event. `RNone` from a host that predates agent logging.
    fn logger(&self) -> ROption<LogSinkBox> {
        ROption::RNone
    }

    /// Makes the call asynchronous: after the handler returns, the host waits (holding none of
    /// its threads) until the agent passes a [`Continuation`] to the returned [`Completion`].
    /// `RNone` from a host that predates async handlers (the SDK then waits on the host's thread).
    fn begin_async(&mut self) -> ROption<CompletionBox> {
        ROption::RNone
    }
}

/// How important a log line is; the host maps it onto its own log levels.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed and needs an operator.
    Error = 0,
    /// Something is wrong but the agent carries on.
    Warn = 1,
    /// What an operator wants to see in normal operation.
    Info = 2,
    /// Detail for finding a problem.
    Debug = 3,
    /// Very detailed tracing.
    Trace = 4,
}

/// A log as the agent holds it: owned, so it can be kept and used from the agent's own threads.
pub type LogSinkBox = LogSink_TO<'static, RBox<()>>;

/// Where an agent's log lines go: implemented by the host for one agent's call, rate-limited
/// there (per agent), so the agent needs no global logger and cannot flood the host's log.
#[sabi_trait]
pub trait LogSink: Send + Sync {
    /// Whether a line at `level` would be written (so the agent can skip formatting it).
    fn enabled(&self, level: LogLevel) -> bool;
    /// Writes one line. The host knows which agent, service and event the sink was made for.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The host's side of a pending asynchronous call, held by the agent until it completes.
pub type CompletionBox = Completion_TO<'static, RBox<()>>;

/// Implemented by the host: the agent completes a pending call through it, once.
#[sabi_trait]
pub trait Completion: Send + Sync {
    /// Hands the host what is left of the handler; the host runs it with the event's callbacks
    /// (on one of its agent threads, briefly) and then raises the event to the next agent.
    /// A second call is ignored.
    #[sabi(last_prefix_field)]
    fn complete(&self, continuation: ContinuationBox);
}

/// The rest of an asynchronous handler, as the host holds it.
pub type ContinuationBox = Continuation_TO<'static, RBox<()>>;

/// Implemented by the SDK around the agent's completion closure.
#[sabi_trait]
pub trait Continuation: Send {
    /// Runs the rest of the handler against the event. `RErr` is a fault, as for a handler.
    #[sabi(last_prefix_field)]
    fn resume(self, host: EventHostRef<'_>) -> RResult<(), RString>;
}

impl From<&crate::SmtpResponse> for FfiResponse {
    fn from(response: &crate::SmtpResponse) -> Self {
        Self {
            code: response.code(),
            enhanced: response.enhanced_code().into(),
            text: response.text().into(),
        }
    }
}

impl FfiResponse {
    /// Back to a validated response (the host validates again: the library may lie).
    pub fn to_response(&self) -> Result<crate::SmtpResponse, crate::InvalidResponse> {
        crate::SmtpResponse::new(self.code, self.enhanced.as_str(), self.text.as_str())
    }
}
