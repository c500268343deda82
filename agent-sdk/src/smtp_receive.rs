//! SMTP receive agents: handlers for the events of an SMTP session.
//!
//! One agent instance serves one SMTP session, from OnConnect to OnDisconnect, so an agent can
//! keep per-session state in `self`. The host makes one instance per session by cloning the agent
//! it built with [`SmtpReceiveAgent::create`]; keep what all sessions share behind an `Arc`.

use crate::abi::{EventHost, HostAction, PropertyScope};
use crate::event_source::{rejection, Source};
use crate::mail_item::MailItem;
use crate::{AgentError, AgentResult, EventSet, Parameters, SmtpResponse};
use abi_stable::std_types::RStr;
use std::marker::PhantomData;

/// An agent for SMTP receive events (Exchange's `SmtpReceiveAgent`).
///
/// Override the handlers you need; the others do nothing. Put `#[agent]` on the impl block: it
/// records which handlers you wrote (so the host calls only those, and `mta agent pipeline` shows
/// them) and connects the agent to [`export_agents!`](crate::export_agents).
///
/// Handlers run in priority order across agents. A reject stops the lower-priority agents for
/// that event. An `Err` or a panic is a fault: the client gets `451 4.3.0` and may retry.
pub trait SmtpReceiveAgent: Clone + Send + Sync + 'static {
    /// The events this agent handles. Written by `#[agent]`: do not write it by hand.
    const EVENTS: EventSet;

    /// Builds the agent from its `<parameter>` elements when the host loads the pipeline.
    /// An error here is a configuration error: the pipeline is not swapped in.
    fn create(parameters: &Parameters) -> Result<Self, AgentError>;

    /// A client connected. May reject the connection, change the banner, disable STARTTLS.
    fn on_connect(&mut self, event: &mut ConnectEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// HELO. May reject it.
    fn on_helo_command(&mut self, event: &mut HeloCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// EHLO. May reject it.
    fn on_ehlo_command(&mut self, event: &mut EhloCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// STARTTLS. May reject it.
    fn on_start_tls_command(&mut self, event: &mut StartTlsCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// AUTH. May reject it.
    fn on_auth_command(&mut self, event: &mut AuthCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// Authentication succeeded. May reject it (the client is then not authenticated).
    fn on_end_of_authentication(
        &mut self,
        event: &mut EndOfAuthenticationEvent<'_>,
    ) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// MAIL FROM. May reject it.
    fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// RCPT TO, before the host checks the recipient. May reject it, or replace it with
    /// [`RcptCommandEvent::set_recipient`]; the host then checks the address the agents left.
    fn on_rcpt_command(&mut self, event: &mut RcptCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// DATA. May reject it.
    fn on_data_command(&mut self, event: &mut DataCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The header block arrived. May reject or discard the message, quarantine it, edit headers.
    fn on_end_of_headers(&mut self, event: &mut EndOfHeadersEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The whole message arrived. May reject, discard or quarantine it, or edit any of it.
    /// Never raised in the Front End service, which does not hold messages.
    fn on_end_of_data(&mut self, event: &mut EndOfDataEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// HELP. May reject it.
    fn on_help_command(&mut self, event: &mut HelpCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// NOOP. May reject it.
    fn on_noop_command(&mut self, event: &mut NoopCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// RSET. May reject it.
    fn on_rset_command(&mut self, event: &mut RsetCommandEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The server sent a 4xx or 5xx reply. Observe only.
    fn on_reject(&mut self, event: &mut RejectEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
    /// The session ended. Observe only.
    fn on_disconnect(&mut self, event: &mut DisconnectEvent<'_>) -> AgentResult {
        let _ = event;
        Ok(())
    }
}

/// The session an SMTP receive event belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpSession {
    /// Unique id of the session in this host; it appears in the host's logs.
    pub id: u64,
    /// The client's `ip:port`.
    pub remote_endpoint: String,
    /// Our `ip:port`.
    pub local_endpoint: String,
    /// The HELO/EHLO domain, empty before the client sent one.
    pub helo_domain: String,
    /// Whether the client's connection runs over TLS. For a client of a Front End, Transport's
    /// agents see the client's connection to the Front End (named with XCLIENT), whether or not
    /// the Front End's own session with Transport is encrypted.
    pub tls: bool,
    /// The authenticated identity, `None` for anonymous clients.
    pub authenticated_as: Option<String>,
    /// Whether the client is outside the organisation (neither authenticated nor trusted).
    pub external: bool,
    /// The receiving service: `frontend` or `transport`.
    pub service: String,
}

impl SmtpSession {
    /// The client's IP address, parsed from [`remote_endpoint`](Self::remote_endpoint).
    pub fn remote_ip(&self) -> Option<std::net::IpAddr> {
        self.remote_endpoint
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
    }
}

/// Why a session ended, as reported to OnDisconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent QUIT.
    Quit,
    /// The client was idle for too long, or the session lasted too long.
    Timeout,
    /// The client closed the connection without QUIT.
    SenderDisconnected,
    /// The client made too many errors.
    TooManyErrors,
    /// The server (or an agent) dropped the connection.
    Dropped,
    /// The server is shutting down.
    Local,
}

impl DisconnectReason {
    /// The name used across the boundary and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quit => "quit",
            Self::Timeout => "timeout",
            Self::SenderDisconnected => "sender_disconnected",
            Self::TooManyErrors => "too_many_errors",
            Self::Dropped => "dropped",
            Self::Local => "local",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s names.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Quit,
            Self::Timeout,
            Self::SenderDisconnected,
            Self::TooManyErrors,
            Self::Dropped,
            Self::Local,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// Marker types naming each SMTP receive event; they select what an [`SmtpEvent`] offers.
pub mod kind {
    macro_rules! kinds {
        ($($name:ident),*) => {$(
            #[doc = concat!("The ", stringify!($name), " event.")]
            #[derive(Debug)]
            pub enum $name {}
        )*};
    }
    kinds!(
        Connect,
        HeloCommand,
        EhloCommand,
        StartTlsCommand,
        AuthCommand,
        EndOfAuthentication,
        MailCommand,
        RcptCommand,
        DataCommand,
        EndOfHeaders,
        EndOfData,
        HelpCommand,
        NoopCommand,
        RsetCommand,
        Reject,
        Disconnect
    );
}

mod sealed {
    pub trait Sealed {}
}

/// Events whose command an agent may reject.
pub trait Rejectable: sealed::Sealed {}
/// Events that carry a mail item.
pub trait CarriesMailItem: sealed::Sealed {}
/// Events at which the message may be discarded or quarantined.
pub trait MessageActions: sealed::Sealed {}

macro_rules! marks {
    ($trait:ident: $($kind:ident),*) => { $(impl $trait for kind::$kind {})* };
}
macro_rules! sealed {
    ($($kind:ident),*) => { $(impl sealed::Sealed for kind::$kind {})* };
}
sealed!(
    Connect,
    HeloCommand,
    EhloCommand,
    StartTlsCommand,
    AuthCommand,
    EndOfAuthentication,
    MailCommand,
    RcptCommand,
    DataCommand,
    EndOfHeaders,
    EndOfData,
    HelpCommand,
    NoopCommand,
    RsetCommand,
    Reject,
    Disconnect
);
marks!(Rejectable: Connect, HeloCommand, EhloCommand, StartTlsCommand, AuthCommand,
    EndOfAuthentication, MailCommand, RcptCommand, DataCommand, EndOfHeaders, EndOfData,
    HelpCommand, NoopCommand, RsetCommand);
marks!(CarriesMailItem: RcptCommand, DataCommand, EndOfHeaders, EndOfData);
marks!(MessageActions: EndOfHeaders, EndOfData);

/// One SMTP receive event: its arguments and the actions it allows. `K` is a [`kind`] marker;
/// use the aliases ([`ConnectEvent`], [`EndOfDataEvent`], ...).
pub struct SmtpEvent<'a, K> {
    source: Source<'a>,
    _kind: PhantomData<fn() -> K>,
}

/// OnConnect.
pub type ConnectEvent<'a> = SmtpEvent<'a, kind::Connect>;
/// OnHeloCommand.
pub type HeloCommandEvent<'a> = SmtpEvent<'a, kind::HeloCommand>;
/// OnEhloCommand.
pub type EhloCommandEvent<'a> = SmtpEvent<'a, kind::EhloCommand>;
/// OnStartTlsCommand.
pub type StartTlsCommandEvent<'a> = SmtpEvent<'a, kind::StartTlsCommand>;
/// OnAuthCommand.
pub type AuthCommandEvent<'a> = SmtpEvent<'a, kind::AuthCommand>;
/// OnEndOfAuthentication.
pub type EndOfAuthenticationEvent<'a> = SmtpEvent<'a, kind::EndOfAuthentication>;
/// OnMailCommand.
pub type MailCommandEvent<'a> = SmtpEvent<'a, kind::MailCommand>;
/// OnRcptCommand.
pub type RcptCommandEvent<'a> = SmtpEvent<'a, kind::RcptCommand>;
/// OnDataCommand.
pub type DataCommandEvent<'a> = SmtpEvent<'a, kind::DataCommand>;
/// OnEndOfHeaders.
pub type EndOfHeadersEvent<'a> = SmtpEvent<'a, kind::EndOfHeaders>;
/// OnEndOfData.
pub type EndOfDataEvent<'a> = SmtpEvent<'a, kind::EndOfData>;
/// OnHelpCommand.
pub type HelpCommandEvent<'a> = SmtpEvent<'a, kind::HelpCommand>;
/// OnNoopCommand.
pub type NoopCommandEvent<'a> = SmtpEvent<'a, kind::NoopCommand>;
/// OnRsetCommand.
pub type RsetCommandEvent<'a> = SmtpEvent<'a, kind::RsetCommand>;
/// OnReject.
pub type RejectEvent<'a> = SmtpEvent<'a, kind::Reject>;
/// OnDisconnect.
pub type DisconnectEvent<'a> = SmtpEvent<'a, kind::Disconnect>;

impl<'a, K> SmtpEvent<'a, K> {
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

    /// The session: endpoints, HELO domain, TLS, authenticated identity.
    pub fn session(&self) -> SmtpSession {
        let s = self.source.host.session().into_option().unwrap_or_default();
        SmtpSession {
            id: s.id,
            remote_endpoint: s.remote_endpoint.into_string(),
            local_endpoint: s.local_endpoint.into_string(),
            helo_domain: s.helo_domain.into_string(),
            tls: s.tls,
            authenticated_as: Some(s.authenticated_as.into_string()).filter(|a| !a.is_empty()),
            external: s.external,
            service: s.service.into_string(),
        }
    }

    /// Closes the connection after this event (no reply is sent to the current command).
    pub fn disconnect(&mut self) -> AgentResult {
        self.source.act(HostAction::Disconnect)
    }

    /// A property of the session's bag, shared by this session's agents.
    pub fn session_property(&self, key: &str) -> Option<String> {
        self.source
            .host
            .property(PropertyScope::Session, RStr::from_str(key))
            .into_option()
            .map(|v| v.into_string())
    }

    /// Sets a property of the session's bag; an empty value removes it.
    pub fn set_session_property(&mut self, key: &str, value: &str) {
        self.source.host.set_property(
            PropertyScope::Session,
            RStr::from_str(key),
            RStr::from_str(value),
        );
    }

    /// Submits a brand-new message into the Submission queue (Transport service only).
    pub fn submit_message(
        &mut self,
        from: &str,
        recipients: &[&str],
        mime: Vec<u8>,
    ) -> AgentResult {
        self.source.submit(from, recipients, mime)
    }
}

impl<K: Rejectable> SmtpEvent<'_, K> {
    /// Rejects the command (or, at OnConnect, the connection) with this 4xx/5xx response, and
    /// stops the lower-priority agents for this event.
    pub fn reject(&mut self, response: &SmtpResponse) -> AgentResult {
        let response = rejection(response)?;
        self.source.act(HostAction::Reject(response))
    }
}

impl<K: CarriesMailItem> SmtpEvent<'_, K> {
    /// The mail item being received.
    pub fn mail_item(&mut self) -> MailItem<'_> {
        MailItem::new(&mut *self.source.host)
    }
}

impl<K: MessageActions> SmtpEvent<'_, K> {
    /// Accepts the message (the client gets 250) and drops it.
    pub fn discard(&mut self) -> AgentResult {
        self.source.act(HostAction::Discard)
    }

    /// Accepts the message and keeps it in quarantine instead of delivering it.
    pub fn quarantine(&mut self, reason: &str) -> AgentResult {
        self.source.act(HostAction::Quarantine(reason.into()))
    }
}

impl ConnectEvent<'_> {
    /// Replaces the text of the 220 greeting.
    pub fn set_banner(&mut self, text: &str) -> AgentResult {
        self.source.act(HostAction::SetBanner(text.into()))
    }

    /// Stops STARTTLS from being offered in this session.
    pub fn disable_start_tls(&mut self) -> AgentResult {
        self.source.act(HostAction::DisableStartTls)
    }
}

impl HeloCommandEvent<'_> {
    /// The domain the client gave.
    pub fn domain(&self) -> String {
        self.source.arg("domain").unwrap_or_default()
    }
}

impl EhloCommandEvent<'_> {
    /// The domain the client gave.
    pub fn domain(&self) -> String {
        self.source.arg("domain").unwrap_or_default()
    }
}

impl AuthCommandEvent<'_> {
    /// The SASL mechanism (`PLAIN`, `LOGIN`).
    pub fn mechanism(&self) -> String {
        self.source.arg("mechanism").unwrap_or_default()
    }
}

impl EndOfAuthenticationEvent<'_> {
    /// The SASL mechanism used.
    pub fn mechanism(&self) -> String {
        self.source.arg("mechanism").unwrap_or_default()
    }

    /// The identity the client authenticated as.
    pub fn identity(&self) -> String {
        self.source.arg("identity").unwrap_or_default()
    }
}

impl MailCommandEvent<'_> {
    /// The reverse path; empty for the null sender `<>`.
    pub fn from(&self) -> String {
        self.source.arg("from").unwrap_or_default()
    }

    /// The SIZE parameter, if given.
    pub fn size(&self) -> Option<u64> {
        self.source.arg("size").and_then(|s| s.parse().ok())
    }

    /// The BODY parameter (`7BIT`, `8BITMIME`, `BINARYMIME`), if given.
    pub fn body_type(&self) -> Option<String> {
        self.source.arg("body")
    }

    /// The DSN ENVID parameter, if given.
    pub fn envid(&self) -> Option<String> {
        self.source.arg("envid")
    }

    /// The DSN RET parameter (`FULL` or `HDRS`), if given.
    pub fn ret(&self) -> Option<String> {
        self.source.arg("ret")
    }

    /// Whether the SMTPUTF8 parameter was given.
    pub fn smtputf8(&self) -> bool {
        self.source.arg("smtputf8").is_some_and(|v| v == "true")
    }
}

impl RcptCommandEvent<'_> {
    /// The recipient of this RCPT command: the client's address, or the one a higher-priority
    /// agent put in its place with [`set_recipient`](Self::set_recipient).
    pub fn recipient(&self) -> String {
        self.source.arg("recipient").unwrap_or_default()
    }

    /// Puts `address` in place of this command's recipient (Exchange's settable
    /// `RecipientAddress`): aliases, catch-alls, address rewriting.
    ///
    /// OnRcptCommand runs before the host checks the recipient, and the host checks what the
    /// agents leave: the new address must be a mailbox of the organization, or the client must
    /// be allowed to relay (an anonymous client rewritten to a remote domain still gets
    /// `550 5.7.1`). Lower-priority agents see the new address in [`recipient`](Self::recipient).
    /// When the client gave no ORCPT, the host records the address it sent as the original
    /// recipient, so delivery reports name what the sender wrote.
    pub fn set_recipient(&mut self, address: &str) -> AgentResult {
        self.source.act(HostAction::SetRecipient(address.into()))
    }

    /// The DSN ORCPT parameter, if given.
    pub fn orcpt(&self) -> Option<String> {
        self.source.arg("orcpt")
    }

    /// The DSN NOTIFY parameter, if given.
    pub fn notify(&self) -> Option<String> {
        self.source.arg("notify")
    }
}

impl RejectEvent<'_> {
    /// The command that was rejected (empty for the connection itself).
    pub fn command(&self) -> String {
        self.source.arg("command").unwrap_or_default()
    }

    /// The reply the server sent, as `code enhanced text`.
    pub fn response(&self) -> String {
        self.source.arg("response").unwrap_or_default()
    }
}

impl DisconnectEvent<'_> {
    /// Why the session ended.
    pub fn reason(&self) -> DisconnectReason {
        self.source
            .arg("reason")
            .and_then(|r| DisconnectReason::parse(&r))
            .unwrap_or(DisconnectReason::Dropped)
    }
}

crate::async_context::async_context!(SmtpEvent);
