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

// `#[sabi_trait]` implements abi_stable's traits inside a generated constant.
#![allow(non_local_definitions)]

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
    /// Whether TLS is active.
    pub tls: bool,
    /// The authenticated identity, empty when anonymous.
    pub authenticated_as: RString,
    /// Whether the client is outside the organisation (not a trusted range, not authenticated).
    pub external: bool,
    /// The service receiving: `frontend` or `transport`.
    pub service: RString,
}

/// The host's callbacks for one event. Methods that need something the event lacks (a mail item
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
