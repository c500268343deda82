//! One SMTP session: reading commands (pipelined), answering them, raising agent events.
//!
//! The session takes the service's agent pipeline snapshot when it starts and keeps it to the
//! end, so a reload never changes the agents under a running session. Commands are framed here
//! (CRLF required, length capped) and parsed by `smtp-proto`; message data goes through
//! `smtp-proto`'s `DataReceiver`, which only ends a message at CRLF "." CRLF, so bare LF or bare
//! CR sequences can never split one message into two (no SMTP smuggling).

use super::Receiver;
use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::{AgentSet, Fault};
use crate::message::MailItem;
use crate::smtp::stream::Stream;
use mta_agent_sdk::abi::FfiSession;
use mta_agent_sdk::{Action, AgentClass, DisconnectReason, Event, SmtpResponse};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The longest command line, CRLF included.
pub(super) const MAX_COMMAND_LINE: usize = 4096;

/// An open transaction: MAIL FROM seen.
pub(super) struct Transaction {
    pub(super) item: MailItem,
}

/// Why the read side stopped.
pub(super) enum Closed {
    /// The client went away.
    Eof,
    /// Idle or session timeout.
    Timeout,
    /// The host is shutting down.
    Shutdown,
    /// I/O error.
    Io,
}

/// What agents said about one event.
#[derive(Default)]
pub(super) struct Raised {
    pub(super) actions: Vec<Action>,
    pub(super) fault: Option<Fault>,
    /// The agents' call did not return: the session has no agents any more and must end.
    pub(super) abandoned: bool,
}

impl Raised {
    pub(super) fn rejection(&self) -> Option<SmtpResponse> {
        self.actions.iter().find_map(|a| match a {
            Action::Reject(r) => Some(r.clone()),
            _ => None,
        })
    }

    pub(super) fn disconnect(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Disconnect))
    }
}

pub(super) struct Session {
    pub(super) id: u64,
    pub(super) receiver: Arc<Receiver>,
    pub(super) stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) tls: bool,
    pub(super) authenticated: Option<String>,
    pub(super) txn: Option<Transaction>,
    pub(super) errors: usize,
    agents: Option<AgentSet>,
    session_properties: BTreeMap<String, String>,
    pub(super) starttls_disabled: bool,
    pub(super) close: Option<DisconnectReason>,
    started: Instant,
    shutdown: watch::Receiver<bool>,
}

/// Runs a session to its end.
pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    receiver: Arc<Receiver>,
    shutdown: watch::Receiver<bool>,
) {
    let agents = receiver
        .agents
        .as_ref()
        .map(|host| AgentSet::new(host.pipeline(), AgentClass::SmtpReceive));
    let mut session = Session {
        id: receiver.next_session_id(),
        receiver,
        stream: Stream::Plain(stream),
        input: Vec::new(),
        output: Vec::new(),
        peer,
        local,
        helo: None,
        esmtp: false,
        tls: false,
        authenticated: None,
        txn: None,
        errors: 0,
        agents,
        session_properties: BTreeMap::new(),
        starttls_disabled: false,
        close: None,
        started: Instant::now(),
        shutdown,
    };
    let span = tracing::info_span!("smtp", service = %session.receiver.config.service, session = session.id, peer = %peer);
    let _enter = span.enter();
    drop(_enter);
    use tracing::Instrument;
    async move {
        tracing::debug!(message = "Session opened.");
        session.converse().await;
        let reason = session.close.unwrap_or(DisconnectReason::Dropped);
        if session.agents.is_some() {
            session
                .raise(
                    Event::OnDisconnect,
                    vec![("reason", reason.as_str().to_string())],
                )
                .await;
        }
        let _ = session.stream.shutdown().await;
        tracing::debug!(message = "Session closed.", reason = reason.as_str());
    }
    .instrument(span)
    .await
}

impl Session {
    async fn converse(&mut self) {
        let raised = self.raise(Event::OnConnect, Vec::new()).await;
        if raised.abandoned || raised.fault.is_some() {
            self.write_line("421 4.3.0 Temporary server error, try again later")
                .await;
            self.close = Some(DisconnectReason::Dropped);
            return;
        }
        if raised.disconnect() {
            self.close = Some(DisconnectReason::Dropped);
            return;
        }
        if let Some(response) = raised.rejection() {
            self.reply(&response);
            self.raise_reject("", &response).await;
            let _ = self.flush().await;
            self.close = Some(DisconnectReason::Dropped);
            return;
        }
        let mut banner = format!("{} ESMTP mta", self.receiver.config.hostname);
        for action in &raised.actions {
            match action {
                Action::SetBanner(text) => {
                    banner = format!("{} {}", self.receiver.config.hostname, text)
                }
                Action::DisableStartTls => self.starttls_disabled = true,
                _ => {}
            }
        }
        self.output
            .extend_from_slice(format!("220 {banner}\r\n").as_bytes());
        while self.close.is_none() {
            let line = match self.read_line().await {
                Ok(line) => line,
                Err(closed) => {
                    self.close = Some(match closed {
                        Closed::Eof | Closed::Io => DisconnectReason::SenderDisconnected,
                        Closed::Timeout => {
                            self.write_line("421 4.4.2 Timeout, closing connection")
                                .await;
                            DisconnectReason::Timeout
                        }
                        Closed::Shutdown => {
                            self.write_line("421 4.3.2 Service shutting down").await;
                            DisconnectReason::Local
                        }
                    });
                    break;
                }
            };
            self.command(line).await;
            if self.close.is_none() && self.errors >= self.receiver.config.max_errors {
                self.write_line("421 4.7.0 Too many errors, closing connection")
                    .await;
                self.close = Some(DisconnectReason::TooManyErrors);
            }
        }
        let _ = self.flush().await;
    }

    /// Reads one command line (CRLF required), flushing pending replies first when the client
    /// has nothing more pipelined. `Ok(None)` stands for a line that was refused (too long,
    /// bare LF) and already answered.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, Closed> {
        loop {
            if let Some(pos) = self.input.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.input.drain(..=pos).collect();
                if line.len() > MAX_COMMAND_LINE {
                    self.error_reply(500, "5.5.6", "Line too long");
                    return Ok(None);
                }
                if line.len() < 2 || line[line.len() - 2] != b'\r' {
                    self.error_reply(500, "5.5.2", "Command lines must end with CRLF");
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            if self.input.len() > MAX_COMMAND_LINE {
                // Discard the over-long line up to its end.
                self.input.clear();
                self.skip_to_newline().await?;
                self.error_reply(500, "5.5.6", "Line too long");
                return Ok(None);
            }
            self.flush().await.map_err(|_| Closed::Io)?;
            self.fill().await?;
        }
    }

    /// Reads the next line for a multi-step command (AUTH); `None` when the session ends.
    pub(super) async fn next_line(&mut self) -> Option<Vec<u8>> {
        match self.read_line().await {
            Ok(Some(line)) => Some(line),
            Ok(None) => None,
            Err(Closed::Eof | Closed::Io) => {
                self.close = Some(DisconnectReason::SenderDisconnected);
                None
            }
            Err(Closed::Timeout) => {
                self.close = Some(DisconnectReason::Timeout);
                None
            }
            Err(Closed::Shutdown) => {
                self.close = Some(DisconnectReason::Local);
                None
            }
        }
    }

    async fn skip_to_newline(&mut self) -> Result<(), Closed> {
        loop {
            self.fill().await?;
            if let Some(pos) = self.input.iter().position(|&b| b == b'\n') {
                self.input.drain(..=pos);
                return Ok(());
            }
            self.input.clear();
        }
    }

    /// Reads more bytes into the input buffer, honouring the timeouts and shutdown.
    pub(super) async fn fill(&mut self) -> Result<(), Closed> {
        let config = &self.receiver.config;
        let remaining = config
            .session_timeout
            .saturating_sub(self.started.elapsed());
        let wait = config.idle_timeout.min(remaining);
        if wait.is_zero() {
            return Err(Closed::Timeout);
        }
        // Read straight into the input buffer's spare room: an idle session holds no read
        // buffer beyond what it already had (memory per idle connection).
        if self.input.capacity() - self.input.len() < 1024 {
            self.input.reserve(if self.input.capacity() < 16 * 1024 {
                4096
            } else {
                16 * 1024
            });
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            read = tokio::time::timeout(wait, self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Err(Closed::Timeout),
                Ok(Ok(0)) => Err(Closed::Eof),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(_)) => Err(Closed::Io),
            },
            _ = shutdown.wait_for(|stop| *stop) => Err(Closed::Shutdown),
        }
    }

    /// Drops whatever the client sent ahead (after STARTTLS nothing sent in clear may be used).
    pub(super) fn discard_input(&mut self) {
        self.input.clear();
    }

    /// Takes everything buffered so far (for the DATA receiver).
    pub(super) fn take_input(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    /// Gives back bytes read past the end of the message (pipelined commands).
    pub(super) fn put_back_input(&mut self, rest: &[u8]) {
        let mut input = rest.to_vec();
        input.extend_from_slice(&self.input);
        self.input = input;
    }

    /// Queues a reply.
    pub(super) fn reply(&mut self, response: &SmtpResponse) {
        self.output.extend_from_slice(response.to_wire().as_bytes());
        if response.code() >= 400 {
            tracing::debug!(message = "Replied with an error.", reply = %response);
        }
    }

    /// Queues a reply without enhanced status codes (EHLO keywords).
    pub(super) fn reply_raw(&mut self, code: u16, lines: &[String]) {
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.output
                .extend_from_slice(format!("{code}{sep}{line}\r\n").as_bytes());
        }
    }

    /// Queues a protocol-error reply and counts it.
    pub(super) fn error_reply(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        let response = SmtpResponse::new(code, enhanced, text).expect("static reply is valid");
        self.reply(&response);
    }

    /// Writes a line now (used when closing).
    async fn write_line(&mut self, line: &str) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        let _ = self.flush().await;
    }

    /// Sends the queued replies.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.output).await;
        self.output.clear();
        result
    }

    /// The session as agents see it.
    fn ffi_session(&self) -> FfiSession {
        FfiSession {
            id: self.id,
            remote_endpoint: self.peer.to_string().into(),
            local_endpoint: self.local.to_string().into(),
            helo_domain: self.helo.clone().unwrap_or_default().into(),
            tls: self.tls,
            authenticated_as: self.authenticated.clone().unwrap_or_default().into(),
            external: !self.may_relay(),
            service: self.receiver.config.service.as_str().into(),
        }
    }

    /// Whether the client is a trusted server (ExchangeServers and a trusted range).
    pub(super) fn trusted_server(&self) -> bool {
        let config = &self.receiver.config;
        config.permissions.servers && config.trusted.iter().any(|r| r.contains(self.peer.ip()))
    }

    /// Whether the client may send to domains that are not ours.
    pub(super) fn may_relay(&self) -> bool {
        (self.receiver.config.permissions.users && self.authenticated.is_some())
            || self.trusted_server()
    }

    /// Whether the client may start a transaction at all.
    pub(super) fn may_submit(&self) -> bool {
        self.receiver.config.permissions.anonymous
            || self.authenticated.is_some()
            || self.trusted_server()
    }

    /// Raises an event to the session's agents; they see (and may edit) the transaction's mail
    /// item when the event carries one.
    pub(super) async fn raise(
        &mut self,
        event: Event,
        args: Vec<(&'static str, String)>,
    ) -> Raised {
        let Some(set) = self.agents.take() else {
            return Raised::default();
        };
        if !set.handles(event) {
            self.agents = Some(set);
            return Raised::default();
        }
        let carries_item = matches!(
            event,
            Event::OnRcptCommand
                | Event::OnDataCommand
                | Event::OnEndOfHeaders
                | Event::OnEndOfData
        );
        let mut cx = CallContext::new(event, self.receiver.config.service);
        cx.session = Some(self.ffi_session());
        cx.args = args;
        cx.session_properties = std::mem::take(&mut self.session_properties);
        if carries_item {
            cx.mail_item = self.txn.as_mut().map(|t| std::mem::take(&mut t.item));
        }
        match dispatch_blocking(set, event, cx).await {
            Blocking::Done(set, cx, result) => {
                self.agents = Some(set);
                self.session_properties = cx.session_properties;
                if let (Some(txn), Some(item)) = (self.txn.as_mut(), cx.mail_item) {
                    txn.item = item;
                }
                let fault = result.err();
                if let Some(fault) = &fault {
                    tracing::warn!(message = "Agent fault.", agent = %fault.agent, event = %fault.event, error = %fault.message);
                }
                let mut raised = Raised {
                    actions: cx.actions,
                    fault,
                    abandoned: false,
                };
                self.submit_agent_messages(&mut raised).await;
                raised
            }
            Blocking::Abandoned(fault) => {
                tracing::warn!(message = "Agent abandoned; closing the session.", agent = %fault.agent, event = %fault.event);
                self.close = Some(DisconnectReason::Dropped);
                Raised {
                    actions: Vec::new(),
                    fault: Some(fault),
                    abandoned: true,
                }
            }
        }
    }

    /// Messages agents submitted go to the service's sink.
    async fn submit_agent_messages(&mut self, raised: &mut Raised) {
        for action in &raised.actions {
            if let Action::SubmitMessage {
                from,
                recipients,
                mime,
            } = action
            {
                let item = MailItem {
                    envelope: crate::message::Envelope {
                        from: from.clone(),
                        recipients: recipients
                            .iter()
                            .map(|r| crate::message::EnvelopeRecipient::new(r))
                            .collect(),
                        ..Default::default()
                    },
                    message: crate::message::Message::parse(mime),
                    ..Default::default()
                };
                match self.receiver.sink.submit(item).await {
                    Ok(reply) => {
                        tracing::info!(message = "Agent submitted a message.", reply = %reply)
                    }
                    Err(e) => tracing::warn!(message = "Agent submission refused.", reply = %e),
                }
            }
        }
    }

    /// Raises OnReject after a 4xx/5xx reply.
    pub(super) async fn raise_reject(&mut self, command: &str, response: &SmtpResponse) {
        if self
            .agents
            .as_ref()
            .is_some_and(|a| a.handles(Event::OnReject))
        {
            self.raise(
                Event::OnReject,
                vec![
                    ("command", command.to_string()),
                    ("response", response.to_string()),
                ],
            )
            .await;
        }
    }
}
