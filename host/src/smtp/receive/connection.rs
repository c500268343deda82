//! One client connection: the tokio shell around the sans-IO [`Session`]. It moves bytes
//! between the socket and the session, keeps the timeouts, and carries out the session's
//! effects: agent events (on the agents' pool, through `dispatch_blocking`), the TLS handshake,
//! password checks, spool writes of large bodies (on the blocking pool), and the service's
//! [`Transactions`].
//!
//! The session takes the service's agent pipeline snapshot when it starts and keeps it to the
//! end, so a reload never changes the agents under a running session.

use super::{Receiver, Transactions};
use crate::agents::context::CallContext;
use crate::agents::dispatch::{dispatch_blocking, Blocking};
use crate::agents::AgentSet;
use crate::message::body::{MessageBody, SpoolWriter};
use crate::message::MailItem;
use crate::smtp::session::{Effect, RaiseRequest, Raised, Session, SpoolChunk, Step};
use crate::smtp::stream::Stream;
use mta_agent_sdk::abi::FfiSession;
use mta_agent_sdk::{Action, AgentClass, DisconnectReason, Event, EventSet};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::Instrument;

/// Why reading stopped.
enum Closed {
    Eof,
    Timeout,
    Shutdown,
}

struct Connection {
    id: u64,
    receiver: Arc<Receiver>,
    stream: Stream,
    agents: Option<AgentSet>,
    session_properties: BTreeMap<String, String>,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    /// When the stop began, once it has.
    drain_started: Option<Instant>,
    /// The spool file of the body being received, once it passed the threshold.
    spool: Option<SpoolWriter>,
}

/// Runs a connection to its end.
pub(super) async fn run(
    stream: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    receiver: Arc<Receiver>,
    shutdown: watch::Receiver<bool>,
) {
    let from_socket = matches!(stream, Stream::Local(_));
    let _open = crate::metrics::global()
        .smtp
        .session(receiver.config.service);
    let agents = receiver
        .agents
        .as_ref()
        .map(|host| AgentSet::new(host.pipeline(), AgentClass::SmtpReceive));
    let events: EventSet = match &agents {
        Some(set) => Event::ALL.into_iter().filter(|e| set.handles(*e)).collect(),
        None => EventSet::EMPTY,
    };
    let mut session = Session::new(
        Arc::clone(&receiver.session),
        Arc::clone(&receiver.policy),
        events,
        peer,
        local,
    );
    if from_socket {
        session.from_own_service();
    }
    let mut connection = Connection {
        id: receiver.next_session_id(),
        receiver,
        stream,
        agents,
        session_properties: BTreeMap::new(),
        started: Instant::now(),
        shutdown,
        drain_started: None,
        spool: None,
    };
    let span = tracing::info_span!("smtp", service = %connection.receiver.config.service, session = connection.id, peer = %peer);
    async move {
        tracing::debug!(message = "Session opened.");
        let transactions = connection.receiver.sink.open();
        let reason = connection.converse(session, transactions).await;
        let _ = connection.stream.shutdown().await;
        tracing::debug!(message = "Session closed.", reason = reason.as_str());
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn converse(
        &mut self,
        mut session: Session,
        mut transactions: Box<dyn Transactions>,
    ) -> DisconnectReason {
        let reason = loop {
            match session.step() {
                Step::Read => {
                    if self.send(&mut session).await.is_err() {
                        session.input_closed();
                        continue;
                    }
                    match self.fill(&mut session).await {
                        Ok(()) => {}
                        Err(Closed::Eof) => session.input_closed(),
                        Err(Closed::Timeout) => session.timed_out(),
                        Err(Closed::Shutdown) => session.shutting_down(),
                    }
                }
                Step::Close(reason) => {
                    let _ = self.send(&mut session).await;
                    break reason;
                }
                Step::Effect(effect) => self.effect(&mut session, &mut *transactions, effect).await,
            }
        };
        transactions.close().await;
        if self.agents.is_some() {
            let args = vec![("reason", reason.as_str().to_string())];
            let request = RaiseRequest {
                event: Event::OnDisconnect,
                args,
                item: None,
            };
            self.raise(&session, request).await;
        }
        reason
    }

    async fn effect(
        &mut self,
        session: &mut Session,
        transactions: &mut dyn Transactions,
        effect: Effect,
    ) {
        match effect {
            Effect::Raise(request) => {
                let raised = self.raise(session, request).await;
                session.agents_done(raised);
            }
            Effect::StartTls => {
                let ok = self.send(session).await.is_ok() && self.handshake().await;
                crate::metrics::global()
                    .smtp
                    .handshake(self.receiver.config.service, ok);
                session.tls_done(ok);
            }
            Effect::Authenticate { user, password } => {
                let peer = session.client().peer.ip();
                let outcome = self.receiver.auth.check(peer, &user, &password).await;
                if outcome == crate::auth::Outcome::Valid {
                    tracing::info!(message = "Authenticated.", user = ?user);
                }
                session.auth_done(outcome);
            }
            Effect::Mail(request) => session.mail_done(transactions.mail(&request).await),
            Effect::Rcpt(recipient) => session.rcpt_done(transactions.rcpt(&recipient).await),
            Effect::Data => {
                self.spool = None;
                session.data_done(transactions.data().await)
            }
            Effect::Message(item) => session.message_done(transactions.message(*item).await),
            Effect::Reset => {
                // A body being spooled for a refused message goes with it.
                self.spool = None;
                transactions.reset().await;
                session.reset_done();
            }
            Effect::Spool(chunk) => {
                let result = self.spool(chunk).await;
                session.spool_done(result);
            }
        }
    }

    /// Writes a piece of the body to the spool file (made at the first piece), off the async
    /// threads; the last piece gives the body.
    async fn spool(&mut self, chunk: SpoolChunk) -> std::io::Result<Option<MessageBody>> {
        let place =
            self.receiver.config.spool.clone().ok_or_else(|| {
                std::io::Error::other("this service has no place to spool bodies")
            })?;
        let writer = self.spool.take();
        let (bytes, last) = match chunk {
            SpoolChunk::Write(bytes) => (bytes, false),
            SpoolChunk::Finish(bytes) => (bytes, true),
        };
        let (writer, body) = tokio::task::spawn_blocking(move || {
            let mut writer = match writer {
                Some(w) => w,
                None => SpoolWriter::create(&place)?,
            };
            writer.write(&bytes)?;
            if last {
                Ok((None, Some(writer.finish()?)))
            } else {
                Ok::<_, std::io::Error>((Some(writer), None))
            }
        })
        .await
        .map_err(std::io::Error::other)??;
        self.spool = writer;
        Ok(body)
    }

    /// Sends the session's replies.
    async fn send(&mut self, session: &mut Session) -> std::io::Result<()> {
        if !session.has_output() {
            return Ok(());
        }
        let output = session.take_output();
        crate::metrics::global()
            .smtp
            .replies(self.receiver.config.service, &output);
        self.stream.write_all(&output).await
    }

    /// Reads more bytes into the session, honouring the timeouts and shutdown.
    async fn fill(&mut self, session: &mut Session) -> Result<(), Closed> {
        let config = &self.receiver.config;
        let remaining = config
            .session_timeout
            .saturating_sub(self.started.elapsed());
        let mut wait = config.idle_timeout.min(remaining);
        if wait.is_zero() {
            return Err(Closed::Timeout);
        }
        let stopping = *self.shutdown.borrow();
        if stopping {
            // At a stop, a transaction under way may finish, within the drain timeout.
            let started = *self.drain_started.get_or_insert_with(Instant::now);
            let left = config.drain_timeout.saturating_sub(started.elapsed());
            if !session.busy() || left.is_zero() {
                return Err(Closed::Shutdown);
            }
            wait = wait.min(left);
        }
        let busy = session.busy();
        // Read straight into the session's input buffer: an idle session holds no read buffer
        // beyond what it already had (memory per idle connection).
        let input = session.input_buffer();
        if input.capacity() - input.len() < 1024 {
            input.reserve(if input.capacity() < 16 * 1024 {
                4096
            } else {
                16 * 1024
            });
        }
        let read =
            |result: Result<std::io::Result<usize>, tokio::time::error::Elapsed>| match result {
                Err(_) if stopping => Err(Closed::Shutdown),
                Err(_) => Err(Closed::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => Err(Closed::Eof),
                Ok(Ok(_)) => Ok(()),
            };
        if stopping || busy {
            return read(tokio::time::timeout(wait, self.stream.read_buf(input)).await);
        }
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            result = tokio::time::timeout(wait, self.stream.read_buf(input)) => read(result),
            _ = shutdown.wait_for(|stop| *stop) => Err(Closed::Shutdown),
        }
    }

    /// The TLS handshake after `220 Ready to start TLS`.
    async fn handshake(&mut self) -> bool {
        let Some(acceptor) = self.receiver.tls.as_ref().map(|t| t.acceptor()) else {
            return false;
        };
        let Some(tcp) = self.stream.take_plain() else {
            return false;
        };
        match tokio::time::timeout(self.receiver.config.idle_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                {
                    let (_, session) = tls.get_ref();
                    tracing::debug!(
                        message = "TLS established.",
                        sni = ?session.server_name().unwrap_or(""),
                        version = %session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                    );
                }
                self.stream = Stream::Tls(Box::new(tls));
                true
            }
            Ok(Err(e)) => {
                tracing::info!(message = "TLS handshake failed.", error = %e);
                false
            }
            Err(_) => false,
        }
    }

    /// The session as agents see it.
    fn ffi_session(&self, session: &Session) -> FfiSession {
        let client = session.client();
        FfiSession {
            id: self.id,
            remote_endpoint: client.remote.to_string().into(),
            local_endpoint: client.local.to_string().into(),
            helo_domain: client.helo_name().unwrap_or_default().into(),
            tls: client.client_tls(),
            authenticated_as: client.authenticated.clone().unwrap_or_default().into(),
            external: !session.may_relay(),
            service: self.receiver.config.service.as_str().into(),
        }
    }

    /// Raises an event to the session's agents.
    async fn raise(&mut self, session: &Session, request: RaiseRequest) -> Raised {
        let RaiseRequest { event, args, item } = request;
        let Some(set) = self.agents.take() else {
            return Raised {
                item,
                ..Raised::default()
            };
        };
        let mut cx = CallContext::new(event, self.receiver.config.service);
        cx.session = Some(self.ffi_session(session));
        cx.args = args;
        cx.session_properties = std::mem::take(&mut self.session_properties);
        cx.mail_item = item;
        match dispatch_blocking(set, event, cx).await {
            Blocking::Done(set, cx, result) => {
                self.agents = Some(set);
                self.session_properties = cx.session_properties;
                let fault = result.err().map(|fault| {
                    tracing::warn!(message = "Agent fault.", agent = %fault.agent, library = %fault.library, event = %fault.event, error = ?fault.message);
                    fault.message
                });
                submit_agent_messages(&self.receiver, &cx.actions).await;
                Raised {
                    actions: cx.actions,
                    fault,
                    abandoned: false,
                    item: cx.mail_item,
                }
            }
            Blocking::Abandoned(fault) => {
                tracing::warn!(message = "Agent abandoned; closing the session.", agent = %fault.agent, library = %fault.library, event = %fault.event);
                Raised {
                    abandoned: true,
                    fault: Some(fault.message),
                    ..Raised::default()
                }
            }
        }
    }
}

/// Messages agents submitted go to the service's sink.
async fn submit_agent_messages(receiver: &Receiver, actions: &[Action]) {
    for action in actions {
        if let Action::SubmitMessage {
            from,
            recipients,
            mime,
        } = action
        {
            let item = match MailItem::submitted(from, recipients, mime) {
                Ok(item) => item,
                Err(e) => {
                    tracing::warn!(message = "Agent submission refused.", error = %e);
                    continue;
                }
            };
            match receiver.sink.submit(item).await {
                Ok(reply) => {
                    tracing::info!(message = "Agent submitted a message.", reply = %reply)
                }
                Err(e) => tracing::warn!(message = "Agent submission refused.", reply = %e),
            }
        }
    }
}
