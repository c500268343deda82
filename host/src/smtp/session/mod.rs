//! The SMTP (and LMTP) session as a pure state machine: bytes in; replies, agent events and
//! messages out. No socket, no clock, no task lives here, so every protocol rule is tested in
//! tables and fuzzed in process; the tokio shell (`smtp::receive::connection`) only moves bytes
//! and carries out [`Effect`]s.
//!
//! The shell drives it in a loop:
//! - [`Session::step`] says what to do next: [`Step::Read`] (send [`Session::take_output`],
//!   then feed what the client sends with [`Session::receive`], or tell it the input ended),
//!   [`Step::Effect`] (do it, then call the `*_done` method the effect names), or
//!   [`Step::Close`] (send the output and close).
//! - Replies accumulate in the output until the machine needs more input, so pipelined
//!   commands are answered in one write, in order.
//!
//! Commands are framed here (CRLF required, 4096 octets at most, no control characters, UTF-8)
//! and parsed by [`crate::smtp::command`]; message data goes through
//! [`crate::smtp::data::DataReceiver`], which ends a message only at CRLF "." CRLF.

mod envelope;
mod hello;
mod message;
mod security;
#[cfg(test)]
mod tests;

use crate::message::MailItem;
use crate::net::IpRange;
use crate::service::Service;
use crate::smtp::command::{self, Command, MailFrom};
use crate::smtp::data::DataReceiver;
use crate::smtp::receive::{Permissions, RecipientPolicy};
use crate::smtp::reply;
use crate::tracking::{EventId, Record};
use mta_agent_sdk::{Action, DisconnectReason, Event, EventSet, SmtpResponse};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

/// The longest command line, CRLF included.
pub const MAX_COMMAND_LINE: usize = 4096;

/// What a listener's sessions need to know; shared by all of them.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The service listening.
    pub service: Service,
    /// Our name in the greeting and Received fields.
    pub hostname: String,
    /// LMTP (RFC 2033) instead of SMTP: LHLO, and one reply per recipient after the data.
    pub lmtp: bool,
    /// Largest message accepted (SIZE), in bytes.
    pub max_message_size: usize,
    /// Most recipients per message (more get 452, which is not a protocol error).
    pub max_recipients: usize,
    /// Protocol errors before the session is closed.
    pub max_errors: usize,
    /// Who may do what.
    pub permissions: Permissions,
    /// Client networks that are trusted servers (may relay without authenticating).
    pub trusted: Vec<IpRange>,
    /// Client networks that may send XCLIENT (Front End nodes).
    pub xclient_hosts: Vec<IpRange>,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub starttls: bool,
    /// Whether AUTH can be offered (users are configured and the connector allows them).
    pub auth: bool,
    /// Whether AUTH needs TLS first.
    pub auth_requires_tls: bool,
    /// The address `RCPT TO:<Postmaster>` stands for.
    pub postmaster: String,
    /// A body past this many bytes is handed to the shell as it arrives ([`Effect::Spool`]),
    /// in pieces of at most this size (and at most 64 KiB), instead of being kept (`None`:
    /// kept). The services use [`crate::message::body::SPOOL_THRESHOLD`].
    pub spool: Option<usize>,
}

/// What the Front End said about its client with XCLIENT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The name the client gave in its HELO or EHLO.
    pub helo: Option<String>,
    /// Whether the Front End trusts the client as a server (it may relay).
    pub trusted: bool,
    /// Whether the client's connection to the Front End was encrypted (STARTTLS).
    pub tls: bool,
}

/// Who is on the other end, as far as the rules and the agents go.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client's address: the connection's, or the one XCLIENT named.
    pub remote: SocketAddr,
    /// The connection's own remote address (a Front End, when XCLIENT was used).
    pub peer: SocketAddr,
    /// Our address.
    pub local: SocketAddr,
    /// What the connection said in HELO, EHLO or LHLO.
    pub helo: Option<String>,
    /// EHLO (or LHLO) rather than HELO.
    pub esmtp: bool,
    /// TLS is active.
    pub tls: bool,
    /// The authenticated user, by AUTH or as XCLIENT named it.
    pub authenticated: Option<String>,
    /// Set once a Front End named its client with XCLIENT.
    pub forwarded: Option<Forwarded>,
    /// The connection came over this host's own service socket (only the MTA's user can
    /// connect there): one of its own services, a trusted server.
    pub own_service: bool,
}

impl Client {
    /// The HELO name agents see: the one the original client gave.
    pub fn helo_name(&self) -> Option<&str> {
        match &self.forwarded {
            Some(f) => f.helo.as_deref(),
            None => self.helo.as_deref(),
        }
    }

    /// Whether the client's own connection is encrypted, as agents and the tracking log see
    /// it: once a Front End named its client with XCLIENT, that client's connection to the
    /// Front End, whatever this hop is; else this connection's TLS. (Whether this hop is
    /// encrypted is `tls`.)
    pub fn client_tls(&self) -> bool {
        match &self.forwarded {
            Some(f) => f.tls,
            None => self.tls,
        }
    }
}

/// Where a transaction's first command is sent (the Front End opens its Transport session here).
#[derive(Clone, Debug)]
pub struct MailRequest {
    /// MAIL FROM and its parameters.
    pub from: MailFrom,
    /// The client, for the next hop (XCLIENT).
    pub client: Client,
    /// Whether the client may relay.
    pub may_relay: bool,
    /// Whether the client is a trusted server.
    pub trusted: bool,
}

/// An agent event to raise.
#[derive(Debug)]
pub struct RaiseRequest {
    /// The event.
    pub event: Event,
    /// Its arguments.
    pub args: Vec<(&'static str, String)>,
    /// The transaction's mail item, for events that carry one (give it back in [`Raised`]).
    pub item: Option<MailItem>,
}

/// What the agents said about an event.
#[derive(Debug, Default)]
pub struct Raised {
    /// What they asked for, in order.
    pub actions: Vec<Action>,
    /// The first fault (an error, a panic), if any.
    pub fault: Option<String>,
    /// The call did not return in time: the agents are gone and the session must end.
    pub abandoned: bool,
    /// The mail item of the request, as the agents left it.
    pub item: Option<MailItem>,
}

impl Raised {
    fn rejection(&self) -> Option<SmtpResponse> {
        self.actions.iter().find_map(|a| match a {
            Action::Reject(r) => Some(r.clone()),
            _ => None,
        })
    }

    fn disconnect(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Disconnect))
    }
}

/// What the shell must do before the session can go on.
#[derive(Debug)]
pub enum Effect {
    /// Raise an event to the agents; then [`Session::agents_done`].
    Raise(RaiseRequest),
    /// Send the output, run the TLS handshake; then [`Session::tls_done`].
    StartTls,
    /// Check a user name and password; then [`Session::auth_done`].
    Authenticate {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// A transaction starts; then [`Session::mail_done`] with its id (or the refusal).
    Mail(MailRequest),
    /// A recipient was accepted here; then [`Session::rcpt_done`].
    Rcpt(crate::message::EnvelopeRecipient),
    /// The client asked for DATA; then [`Session::data_done`].
    Data,
    /// The message; then [`Session::message_done`] with one reply (SMTP) or one per recipient
    /// (LMTP).
    Message(Box<MailItem>),
    /// The transaction was abandoned (RSET, a refused message); then [`Session::reset_done`].
    Reset,
    /// Body bytes for the spool file; then [`Session::spool_done`].
    Spool(SpoolChunk),
}

/// What the shell does with its spool file.
#[derive(Debug)]
pub enum SpoolChunk {
    /// Append these bytes (a spool file is opened for the first).
    Write(Vec<u8>),
    /// Append these last bytes and hand back the body.
    Finish(Vec<u8>),
}

/// The next thing to do.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value at a time, moved straight into a match
pub enum Step {
    /// Send the output, then read.
    Read,
    /// Do this first.
    Effect(Effect),
    /// Send the output, then close.
    Close(DisconnectReason),
}

/// An open transaction: MAIL FROM accepted.
#[derive(Debug)]
struct Transaction {
    item: MailItem,
    /// The id the sink gave it (the queue id on Transport), for the Received field.
    id: String,
    /// Whether the sink was told about DATA (so a refused message must be reset there).
    data_started: bool,
}

/// How input is being read.
#[derive(Debug)]
enum Mode {
    /// Command lines.
    Command,
    /// Message data.
    Data {
        receiver: DataReceiver,
        /// The data so far; once spooling, the body bytes not yet handed to the shell.
        message: Vec<u8>,
        size: usize,
        spooling: Spooling,
    },
    /// An AUTH response line.
    AuthLine(security::AuthStep),
    /// An over-long line, discarded up to its end.
    SkipLine,
}

/// A body going to the spool as it arrives.
#[derive(Debug, Default)]
struct Spooling {
    /// The header block, set aside once the body goes to the spool.
    head: Option<Vec<u8>>,
    /// Why the data will be refused at its end (a failed spool write, a header block too
    /// large); nothing more is kept meanwhile.
    refusal: Option<SmtpResponse>,
}

/// What a pending effect resumes into.
#[derive(Debug)]
enum Pending {
    Connect(Option<Command>),
    Hello {
        host: String,
        esmtp: bool,
    },
    Mail(MailFrom),
    MailSink,
    Rcpt(crate::message::EnvelopeRecipient),
    RcptSink(crate::message::EnvelopeRecipient),
    DataAgents,
    DataSink,
    EndOfHeaders(crate::message::MessageBody),
    /// A spool write; with the header block and size when it was the last.
    Spool(Option<(Vec<u8>, usize)>),
    EndOfData,
    /// The message went to the sink, which owes this many replies.
    /// Replies wanted, and the record that tracks the outcome.
    Message(usize, Box<crate::tracking::Record>),
    Reset,
    Simple {
        event: Event,
        ok: SmtpResponse,
    },
    StartTlsAgents,
    StartTls,
    AuthAgents {
        mechanism: String,
        initial: Option<String>,
    },
    AuthCheck {
        mechanism: String,
        user: String,
    },
    EndOfAuthentication {
        user: String,
    },
    Notification,
}

/// One SMTP session.
pub struct Session {
    config: Arc<SessionConfig>,
    events: EventSet,
    policy: Arc<dyn RecipientPolicy>,
    input: Vec<u8>,
    output: Vec<u8>,
    mode: Mode,
    client: Client,
    txn: Option<Transaction>,
    errors: usize,
    pending: Option<Pending>,
    notifications: VecDeque<(String, SmtpResponse)>,
    closing: Option<DisconnectReason>,
    started: bool,
    /// OnConnect was raised (it waits for XCLIENT on connections from Front End nodes).
    connected: bool,
    starttls_disabled: bool,
    /// An agent discarded the message being received.
    discard: bool,
    /// An effect a continuation produced, for the next [`step`](Self::step).
    queued: Option<Effect>,
    /// The addresses of the last MAIL and RCPT commands, for tracking their refusals.
    subject: Subject,
}

/// What the last MAIL and RCPT commands named.
#[derive(Debug, Default)]
struct Subject {
    sender: Option<String>,
    recipient: Option<String>,
}

impl Session {
    /// A session for a connection from `peer` to `local`, whose agents handle `events`.
    pub fn new(
        config: Arc<SessionConfig>,
        policy: Arc<dyn RecipientPolicy>,
        events: EventSet,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Self {
        let events = if config.service == Service::FrontEnd {
            events.without(Event::OnEndOfData)
        } else {
            events
        };
        Self {
            config,
            events,
            policy,
            input: Vec::new(),
            output: Vec::new(),
            mode: Mode::Command,
            client: Client {
                remote: peer,
                peer,
                local,
                helo: None,
                esmtp: false,
                tls: false,
                authenticated: None,
                forwarded: None,
                own_service: false,
            },
            txn: None,
            errors: 0,
            pending: None,
            notifications: VecDeque::new(),
            closing: None,
            started: false,
            connected: false,
            starttls_disabled: false,
            discard: false,
            queued: None,
            subject: Subject::default(),
        }
    }

    /// The client as the rules see it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The session's settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// The buffer to read into directly (avoids a copy); bytes appended are input.
    pub fn input_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.input
    }

    /// Replies to send, in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether replies wait to be sent.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Whether a transaction is under way (MAIL accepted, or data or AUTH being read): at a
    /// stop, the shell lets it finish.
    pub fn busy(&self) -> bool {
        self.txn.is_some() || matches!(self.mode, Mode::Data { .. } | Mode::AuthLine(_))
    }

    /// The client closed the connection (or it broke).
    pub fn input_closed(&mut self) {
        self.closing
            .get_or_insert(DisconnectReason::SenderDisconnected);
    }

    /// The client was idle too long, or the session lasted too long.
    pub fn timed_out(&mut self) {
        if self.closing.is_none() {
            self.line(421, "4.4.2", "Timeout, closing connection");
            self.closing = Some(DisconnectReason::Timeout);
        }
    }

    /// The host is stopping.
    pub fn shutting_down(&mut self) {
        if self.closing.is_none() {
            self.line(421, "4.3.2", "Service shutting down");
            self.closing = Some(DisconnectReason::Local);
        }
    }

    /// The connection came over this host's service socket: one of its own services, which
    /// may relay and name its client with XCLIENT.
    pub fn from_own_service(&mut self) {
        self.client.own_service = true;
    }

    /// Whether the client may start a transaction at all.
    fn may_submit(&self) -> bool {
        self.config.permissions.anonymous
            || self.client.authenticated.is_some()
            || self.trusted_server()
    }

    /// Whether the client is a trusted server: in a trusted range (ExchangeServers), or vouched
    /// for by the Front End.
    fn trusted_server(&self) -> bool {
        match &self.client.forwarded {
            Some(f) => f.trusted,
            None => {
                self.client.own_service
                    || (self.config.permissions.servers
                        && self
                            .config
                            .trusted
                            .iter()
                            .any(|r| r.contains(self.client.remote.ip())))
            }
        }
    }

    /// Whether the client may send to domains that are not ours.
    pub fn may_relay(&self) -> bool {
        (self.config.permissions.users && self.client.authenticated.is_some())
            || self.trusted_server()
    }

    /// Whether the connection comes from a Front End node that may name its client.
    fn is_front_end_node(&self) -> bool {
        self.client.forwarded.is_none()
            && (self.client.own_service
                || self
                    .config
                    .xclient_hosts
                    .iter()
                    .any(|r| r.contains(self.client.peer.ip())))
    }

    /// What to do next.
    pub fn step(&mut self) -> Step {
        loop {
            if let Some(effect) = self.queued.take() {
                return Step::Effect(effect);
            }
            if self.pending.is_some() {
                // The shell must answer the last effect first.
                debug_assert!(false, "step() while an effect is pending");
                return Step::Close(DisconnectReason::Local);
            }
            if let Some(effect) = self.notify_reject() {
                return Step::Effect(effect);
            }
            if let Some(reason) = self.closing {
                return Step::Close(reason);
            }
            if !self.started {
                self.started = true;
                if let Some(effect) = self.start() {
                    return Step::Effect(effect);
                }
                continue;
            }
            let effect = if matches!(self.mode, Mode::Data { .. }) {
                match self.data_input() {
                    None => return Step::Read,
                    Some(effect) => effect,
                }
            } else {
                match self.next_line() {
                    None => return Step::Read,
                    Some(line) => self.line_in(line),
                }
            };
            if let Some(effect) = effect {
                return Step::Effect(effect);
            }
            self.check_errors();
        }
    }

    fn check_errors(&mut self) {
        if self.closing.is_none() && self.errors >= self.config.max_errors {
            self.line(421, "4.7.0", "Too many errors, closing connection");
            self.closing = Some(DisconnectReason::TooManyErrors);
        }
    }

    /// Takes the next command line off the input: `Some(Ok)` a line, `Some(Err)` a line that
    /// was refused while framing (the reply to send), `None` when more input is needed.
    fn next_line(&mut self) -> Option<Result<String, SmtpResponse>> {
        loop {
            let Some(pos) = memchr::memchr(b'\n', &self.input) else {
                if self.input.len() > MAX_COMMAND_LINE {
                    self.input.clear();
                    if !matches!(self.mode, Mode::SkipLine) {
                        self.mode = Mode::SkipLine;
                        return Some(Err(reply(500, "5.5.6", "Line too long")));
                    }
                }
                return None;
            };
            let line: Vec<u8> = self.input.drain(..=pos).collect();
            if matches!(self.mode, Mode::SkipLine) {
                self.mode = Mode::Command;
                continue;
            }
            return Some(frame(&line));
        }
    }

    /// Handles one framed line in the current mode.
    fn line_in(&mut self, line: Result<String, SmtpResponse>) -> Option<Effect> {
        if matches!(self.mode, Mode::AuthLine(_)) {
            if let Mode::AuthLine(step) = std::mem::replace(&mut self.mode, Mode::Command) {
                return self.auth_line(step, line);
            }
        }
        match line.and_then(|l| command::parse(&l)) {
            Ok(command) => self.command(command),
            Err(response) => {
                self.refuse("", response);
                None
            }
        }
    }

    /// Dispatches a command, raising OnConnect first when it was held back for XCLIENT.
    fn command(&mut self, command: Command) -> Option<Effect> {
        if !self.connected && !matches!(command, Command::Xclient(_)) {
            self.connected = true;
            return self.raise(
                Event::OnConnect,
                Vec::new(),
                Pending::Connect(Some(command)),
            );
        }
        match command {
            Command::Hello { host, extended } => self.hello(host, extended),
            Command::Lhlo { host } => self.lhlo(host),
            Command::Xclient(attributes) => self.xclient(attributes),
            Command::Mail(from) => self.mail(from),
            Command::Rcpt(to) => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => self.simple(Event::OnRsetCommand, reply(250, "2.0.0", "OK")),
            Command::Noop => self.simple(Event::OnNoopCommand, reply(250, "2.0.0", "OK")),
            Command::Help => self.simple(
                Event::OnHelpCommand,
                reply(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP HELP VRFY QUIT",
                ),
            ),
            Command::Quit => {
                self.line(221, "2.0.0", "Bye");
                self.closing = Some(DisconnectReason::Quit);
                None
            }
            Command::Vrfy => {
                self.line(
                    252,
                    "2.5.0",
                    "Cannot VRFY the user, but will accept the message and try",
                );
                None
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
            Command::Bdat => {
                self.refuse("BDAT", reply(502, "5.5.1", "CHUNKING is not offered"));
                None
            }
            Command::Expn => {
                self.refuse("EXPN", reply(502, "5.5.1", "EXPN is not offered"));
                None
            }
            Command::NotImplemented(verb) => {
                self.refuse(
                    &verb,
                    reply(502, "5.5.1", &format!("{verb} is not implemented")),
                );
                None
            }
        }
    }

    /// The answer to the last [`Effect::Raise`].
    pub fn agents_done(&mut self, raised: Raised) {
        let pending = self.pending.take();
        if let (Some(item), Some(txn)) = (raised.item, self.txn.as_mut()) {
            txn.item = item;
        }
        let raised = Raised {
            item: None,
            ..raised
        };
        let effect = match pending {
            Some(Pending::Connect(then)) => self.connected_with(raised, then),
            Some(Pending::Hello { host, esmtp }) => self.hello_answered(raised, host, esmtp),
            Some(Pending::Mail(from)) => self.mail_answered(raised, from),
            Some(Pending::Rcpt(rcpt)) => self.rcpt_answered(raised, rcpt),
            Some(Pending::DataAgents) => self.data_answered(raised),
            Some(Pending::EndOfHeaders(body)) => self.end_of_headers_answered(raised, body),
            Some(Pending::EndOfData) => self.end_of_data_answered(raised),
            Some(Pending::Simple { event, ok }) => self.simple_answered(raised, event, ok),
            Some(Pending::StartTlsAgents) => self.starttls_answered(raised),
            Some(Pending::AuthAgents { mechanism, initial }) => {
                self.auth_answered(raised, mechanism, initial)
            }
            Some(Pending::EndOfAuthentication { user }) => self.end_of_auth_answered(raised, user),
            Some(Pending::Notification) | None => None,
            Some(other) => {
                debug_assert!(false, "agents_done for {other:?}");
                None
            }
        };
        self.resume_with(effect);
    }

    /// Keeps the effect a continuation produced for the next [`step`](Self::step).
    fn resume_with(&mut self, effect: Option<Effect>) {
        if let Some(effect) = effect {
            self.queued = Some(effect);
        }
    }

    /// Raises `event`, continuing with `pending` once the agents answered. An event no agent
    /// of this session handles is answered at once, without an effect.
    fn raise(
        &mut self,
        event: Event,
        args: Vec<(&'static str, String)>,
        pending: Pending,
    ) -> Option<Effect> {
        if !self.events.contains(event) {
            self.pending = Some(pending);
            self.agents_done(Raised::default());
            return self.queued.take();
        }
        let carries_item = matches!(
            event,
            Event::OnRcptCommand
                | Event::OnDataCommand
                | Event::OnEndOfHeaders
                | Event::OnEndOfData
        );
        let item = if carries_item {
            self.txn.as_mut().map(|t| std::mem::take(&mut t.item))
        } else {
            None
        };
        self.pending = Some(pending);
        Some(Effect::Raise(RaiseRequest { event, args, item }))
    }

    /// Applies what agents said about a command. `true` when they answered it (a reject, a
    /// fault) or the session is closing.
    fn answered_by_agents(&mut self, command: &str, raised: &Raised) -> bool {
        if raised.abandoned {
            self.line(421, "4.3.0", "Temporary server error, closing connection");
            self.closing = Some(DisconnectReason::Dropped);
            self.events = EventSet::EMPTY;
            return true;
        }
        if raised.fault.is_some() {
            self.refuse_uncounted(
                command,
                reply(451, "4.3.0", "Temporary agent failure, try again later"),
            );
            return true;
        }
        if raised.disconnect() {
            self.closing = Some(DisconnectReason::Dropped);
            return true;
        }
        if let Some(response) = raised.rejection() {
            self.refuse_uncounted(command, response);
            return true;
        }
        false
    }

    /// Queues a reply.
    fn reply(&mut self, response: &SmtpResponse) {
        self.output.extend_from_slice(response.to_wire().as_bytes());
    }

    /// Queues a reply built from its parts.
    fn line(&mut self, code: u16, enhanced: &str, text: &str) {
        self.reply(&reply(code, enhanced, text));
    }

    /// A protocol error: counted, answered, and raised as OnReject.
    fn refuse(&mut self, command: &str, response: SmtpResponse) {
        self.errors += 1;
        self.refuse_uncounted(command, response);
    }

    /// A refusal that is not the client's error (a policy, a limit, the next hop): answered and
    /// raised as OnReject, not counted.
    fn refuse_uncounted(&mut self, command: &str, response: SmtpResponse) {
        self.track_refusal(command, &response);
        self.refuse_untracked(command, response);
    }

    /// A refusal already tracked: answered and raised as OnReject.
    fn refuse_untracked(&mut self, command: &str, response: SmtpResponse) {
        self.reply(&response);
        if self.events.contains(Event::OnReject) {
            self.notifications
                .push_back((command.to_string(), response));
        }
    }

    /// A tracking record of `event` about this session's client.
    fn tracking_record(&self, event: EventId, item: Option<&MailItem>) -> Record {
        let service = self.config.service;
        let mut record = match item {
            Some(item) => Record::item(event, service, item),
            None => Record::new(event, service),
        };
        record.source = Some("SMTP".into());
        record.client = Some(self.client.remote.ip().to_string());
        record.helo = self.client.helo_name().map(str::to_string);
        record.auth_user = self.client.authenticated.clone();
        record.tls = Some(self.client.client_tls());
        record
    }

    /// Tracks a refusal of MAIL, RCPT or DATA (Postfix's NOQUEUE lines): who, to whom, why.
    fn track_refusal(&self, command: &str, response: &SmtpResponse) {
        if !matches!(command, "MAIL" | "RCPT" | "DATA") {
            return;
        }
        let item = self.txn.as_ref().map(|t| &t.item);
        let mut record = self.tracking_record(EventId::Reject, item);
        if item.is_none() {
            record.sender = self.subject.sender.clone().unwrap_or_default();
        }
        if command != "DATA" {
            record.size = None;
        }
        if command == "RCPT" {
            record.recipients = self.subject.recipient.iter().cloned().collect();
        }
        record.reply(response).detail(command).write();
    }

    /// Raises OnReject for the next refusal waiting to be told.
    fn notify_reject(&mut self) -> Option<Effect> {
        if !self.events.contains(Event::OnReject) {
            self.notifications.clear();
            return None;
        }
        let (command, response) = self.notifications.pop_front()?;
        self.raise(
            Event::OnReject,
            vec![("command", command), ("response", response.to_string())],
            Pending::Notification,
        )
    }

    /// Ends the transaction, telling the sink when it had been told about it.
    fn end_transaction(&mut self) -> Option<Effect> {
        self.discard = false;
        match self.txn.take() {
            Some(_) => {
                self.pending = Some(Pending::Reset);
                Some(Effect::Reset)
            }
            None => None,
        }
    }

    /// The answer to [`Effect::Reset`].
    pub fn reset_done(&mut self) {
        let pending = self.pending.take();
        debug_assert!(matches!(pending, Some(Pending::Reset)), "{pending:?}");
    }

    /// A simple command: raise its event, then answer `ok`.
    fn simple(&mut self, event: Event, ok: SmtpResponse) -> Option<Effect> {
        self.raise(event, Vec::new(), Pending::Simple { event, ok })
    }

    fn simple_answered(
        &mut self,
        raised: Raised,
        event: Event,
        ok: SmtpResponse,
    ) -> Option<Effect> {
        let verb = match event {
            Event::OnRsetCommand => "RSET",
            Event::OnNoopCommand => "NOOP",
            _ => "HELP",
        };
        if self.answered_by_agents(verb, &raised) {
            return None;
        }
        self.reply(&ok);
        if event == Event::OnRsetCommand {
            return self.end_transaction();
        }
        None
    }
}

/// Checks a command line's framing and characters; the line without its CRLF.
fn frame(line: &[u8]) -> Result<String, SmtpResponse> {
    if line.len() > MAX_COMMAND_LINE {
        return Err(reply(500, "5.5.6", "Line too long"));
    }
    let Some(content) = line.strip_suffix(b"\r\n") else {
        return Err(reply(500, "5.5.2", "Command lines must end with CRLF"));
    };
    let verb = content
        .get(..4)
        .map(|v| v.to_ascii_uppercase())
        .unwrap_or_default();
    let Ok(text) = std::str::from_utf8(content) else {
        return Err(match verb.as_slice() {
            b"MAIL" => reply(501, "5.1.7", "Bad sender address syntax: not UTF-8"),
            b"RCPT" => reply(501, "5.1.3", "Bad recipient address syntax: not UTF-8"),
            _ => reply(500, "5.5.2", "Command line is not valid UTF-8"),
        });
    };
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(reply(
            501,
            "5.5.2",
            "Control characters are not allowed in commands",
        ));
    }
    Ok(text.to_string())
}
