//! SMTP receive: the listener and what its sessions hand their transactions to, shared by
//! every service that listens (Front End, Transport, Mailbox Transport delivery).
//!
//! The listener accepts with a cap on concurrent connections (overall and per client IP) and
//! runs one [`connection`] per client: a thin tokio shell around the sans-IO
//! [`crate::smtp::session::Session`]. What a service does with each transaction is its
//! [`Sink`]; which recipients it takes is its [`RecipientPolicy`].

mod connection;

use crate::agents::AgentHost;
use crate::message::{EnvelopeRecipient, MailItem};
use crate::service::Service;
use crate::smtp::session::{MailRequest, SessionConfig};
use crate::smtp::stream::Stream;
use mta_agent_sdk::SmtpResponse;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// A boxed future, for the service hooks.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A future that is ready at once.
pub fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

/// What a service does with what its sessions receive.
pub trait Sink: Send + Sync + 'static {
    /// The transactions of one new session.
    fn open(&self) -> Box<dyn Transactions>;

    /// Takes a whole message that did not come over SMTP: a message an agent submitted, a
    /// file of the pickup or replay directory. `Ok` is the 2xx answer, once the message is
    /// durable.
    fn submit(&self, item: MailItem) -> BoxFuture<'_, Result<SmtpResponse, SmtpResponse>>;

    /// Whether the directories should wait before submitting more (back pressure).
    fn paused(&self) -> bool {
        false
    }
}

/// One session's transactions, step by step, as the client sends them. Each `Err` is the reply
/// the client gets for that command. The Front End relays each step to a Transport node as it
/// comes; Transport and Mailbox Transport take the envelope at once and act on the message.
pub trait Transactions: Send {
    /// MAIL FROM was accepted here: the transaction's id (a queue id on Transport).
    fn mail<'a>(
        &'a mut self,
        request: &'a MailRequest,
    ) -> BoxFuture<'a, Result<String, SmtpResponse>>;

    /// A recipient was accepted here.
    fn rcpt<'a>(
        &'a mut self,
        recipient: &'a EnvelopeRecipient,
    ) -> BoxFuture<'a, Result<(), SmtpResponse>> {
        let _ = recipient;
        ready(Ok(()))
    }

    /// The client asked for DATA.
    fn data(&mut self) -> BoxFuture<'_, Result<(), SmtpResponse>> {
        ready(Ok(()))
    }

    /// The message, with the recipients accepted. One reply for SMTP (given only once the
    /// message is durable, delivered, or accepted by the next hop), one per recipient for LMTP.
    fn message(&mut self, item: MailItem) -> BoxFuture<'_, Vec<SmtpResponse>>;

    /// The transaction was abandoned.
    fn reset(&mut self) -> BoxFuture<'_, ()> {
        ready(())
    }

    /// The session ended.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        ready(())
    }
}

/// Which recipients a service takes.
pub trait RecipientPolicy: Send + Sync + 'static {
    /// `Ok` to take `address`; `may_relay` says whether the client may relay.
    fn check(&self, address: &str, may_relay: bool) -> Result<(), SmtpResponse>;
}

/// Settings of one SMTP listener.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// The service listening.
    pub service: Service,
    /// Our name in the greeting and Received fields.
    pub hostname: String,
    /// Largest message accepted (SIZE), in bytes.
    pub max_message_size: usize,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Errors before the session is closed.
    pub max_errors: usize,
    /// Close a session idle this long.
    pub idle_timeout: Duration,
    /// Close a session lasting this long.
    pub session_timeout: Duration,
    /// LMTP instead of SMTP (Mailbox Transport delivery).
    pub lmtp: bool,
    /// At a stop, how long sessions in the middle of a transaction may take to finish it.
    pub drain_timeout: Duration,
    /// Concurrent connections.
    pub max_connections: usize,
    /// Concurrent connections from one IP.
    pub max_connections_per_ip: usize,
    /// Client networks allowed to relay.
    pub trusted: Vec<crate::net::IpRange>,
    /// Client networks that may name their client with XCLIENT (Front End nodes).
    pub xclient_hosts: Vec<crate::net::IpRange>,
    /// The address `RCPT TO:<Postmaster>` stands for.
    pub postmaster: String,
    /// If set, only these client networks may connect at all.
    pub allowed_clients: Option<Vec<crate::net::IpRange>>,
    /// Who may do what on this connector.
    pub permissions: Permissions,
    /// Where bodies past the spool threshold go as they arrive (`None`: kept in memory).
    pub spool: Option<crate::message::body::SpoolPlace>,
}

/// A receive connector's permission groups (Exchange's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// AnonymousUsers: anyone may send to our accepted domains.
    pub anonymous: bool,
    /// ExchangeUsers: users may authenticate, and then relay.
    pub users: bool,
    /// ExchangeServers: clients in the trusted ranges may relay without authenticating.
    pub servers: bool,
}

impl Permissions {
    /// Parses Exchange's group names; unknown names are an error naming the valid ones.
    pub fn from_names(names: &[String]) -> Result<Self, String> {
        let mut p = Permissions {
            anonymous: false,
            users: false,
            servers: false,
        };
        for name in names {
            match name.to_ascii_lowercase().as_str() {
                "anonymoususers" => p.anonymous = true,
                "exchangeusers" => p.users = true,
                "exchangeservers" => p.servers = true,
                _ => {
                    return Err(format!(
                        "unknown permission group {name:?}: expected AnonymousUsers, ExchangeUsers or ExchangeServers"
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// A receive connector's size limit unless configured (Exchange's 36 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 36 * 1024 * 1024;

impl ReceiveConfig {
    /// Defaults for `service`.
    pub fn new(service: Service, hostname: &str) -> Self {
        Self {
            service,
            hostname: hostname.to_string(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: 200,
            max_errors: 10,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            lmtp: service == Service::Mailbox,
            drain_timeout: Duration::from_secs(30),
            max_connections: 5000,
            max_connections_per_ip: 100,
            trusted: Vec::new(),
            xclient_hosts: Vec::new(),
            postmaster: format!("postmaster@{hostname}"),
            allowed_clients: None,
            spool: None,
            permissions: match service {
                Service::FrontEnd => Permissions {
                    anonymous: true,
                    users: true,
                    servers: true,
                },
                Service::Transport => Permissions {
                    anonymous: true,
                    users: true,
                    servers: true,
                },
                Service::Mailbox => Permissions {
                    anonymous: false,
                    users: false,
                    servers: true,
                },
            },
        }
    }
}

/// What a session needs from its service.
pub struct Receiver {
    /// Settings.
    pub config: ReceiveConfig,
    /// What each session's protocol machine needs, built once.
    pub session: Arc<SessionConfig>,
    /// The service's agents (none for Mailbox Transport).
    pub agents: Option<Arc<AgentHost>>,
    /// Where transactions go.
    pub sink: Arc<dyn Sink>,
    /// Which recipients are taken.
    pub policy: Arc<dyn RecipientPolicy>,
    /// STARTTLS, when offered.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Users for AUTH, and the guard against guessing.
    pub auth: Arc<crate::auth::Authenticator>,
    /// Session numbers and connections per client address belong to the listener, not to one
    /// configuration: a receiver built at a reload shares them with the one it replaces.
    sessions: Arc<AtomicU64>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Receiver {
    /// A receiver for one listener, without STARTTLS or AUTH.
    pub fn new(
        config: ReceiveConfig,
        agents: Option<Arc<AgentHost>>,
        sink: Arc<dyn Sink>,
        policy: Arc<dyn RecipientPolicy>,
    ) -> Arc<Self> {
        Self::with_security(
            config,
            agents,
            sink,
            policy,
            None,
            Arc::new(crate::auth::Authenticator::new(
                &crate::config::AuthConfig::default(),
            )),
        )
    }

    /// A receiver offering STARTTLS and AUTH.
    pub fn with_security(
        config: ReceiveConfig,
        agents: Option<Arc<AgentHost>>,
        sink: Arc<dyn Sink>,
        policy: Arc<dyn RecipientPolicy>,
        tls: Option<Arc<crate::tls::Tls>>,
        auth: Arc<crate::auth::Authenticator>,
    ) -> Arc<Self> {
        let session = Arc::new(SessionConfig {
            service: config.service,
            hostname: config.hostname.clone(),
            lmtp: config.lmtp,
            max_message_size: config.max_message_size,
            max_recipients: config.max_recipients,
            max_errors: config.max_errors,
            permissions: config.permissions,
            trusted: config.trusted.clone(),
            xclient_hosts: config.xclient_hosts.clone(),
            starttls: tls.is_some(),
            auth: auth.has_users(),
            auth_requires_tls: auth.require_tls(),
            postmaster: config.postmaster.clone(),
            spool: config
                .spool
                .is_some()
                .then_some(crate::message::body::SPOOL_THRESHOLD),
        });
        Arc::new(Self {
            config,
            session,
            agents,
            sink,
            policy,
            tls,
            auth,
            sessions: Arc::new(AtomicU64::new(0)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Makes `next`, built from a reloaded configuration, carry on this receiver's session
    /// numbers and per-address connection counts (sessions in flight keep this one).
    pub fn hand_over_to(&self, next: &mut Arc<Receiver>) {
        if let Some(next) = Arc::get_mut(next) {
            next.sessions = Arc::clone(&self.sessions);
            next.per_ip = Arc::clone(&self.per_ip);
        }
    }

    fn next_session_id(&self) -> u64 {
        self.sessions.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Releases a per-IP slot when the session ends.
struct IpSlot {
    receiver: Arc<Receiver>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self
            .receiver
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until `shutdown` turns true, then drains: new connections get
/// `421 4.3.2`, sessions in the middle of a transaction may finish it (up to the drain
/// timeout), the others are told `421 4.3.2` at their next command.
///
/// `own`, when given, is this host's service socket: connections there come from its own
/// services (only the MTA's user can connect), and are trusted as servers.
pub async fn serve(
    listener: TcpListener,
    own: Option<tokio::net::UnixListener>,
    receivers: Arc<arc_swap::ArcSwap<Receiver>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(receivers.load().config.max_connections));
    let mut backoff = Duration::from_millis(10);
    let mut tasks = tokio::task::JoinSet::new();
    let own_address: SocketAddr = ([127, 0, 0, 1], 0).into();
    loop {
        enum Accepted {
            Tcp(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
            Own(std::io::Result<tokio::net::UnixStream>),
            Stop,
        }
        let next = tokio::select! {
            accepted = listener.accept() => Accepted::Tcp(accepted),
            own = async {
                match &own {
                    Some(l) => l.accept().await.map(|(s, _)| s),
                    None => std::future::pending().await,
                }
            } => Accepted::Own(own),
            _ = shutdown.wait_for(|stop| *stop) => Accepted::Stop,
        };
        let accepted = match next {
            Accepted::Tcp(accepted) => accepted,
            Accepted::Own(Ok(stream)) => {
                let (receiver, shutdown) = (receivers.load_full(), shutdown.clone());
                tasks.spawn(async move {
                    connection::run(
                        Stream::Local(stream),
                        own_address,
                        own_address,
                        receiver,
                        shutdown,
                    )
                    .await;
                });
                continue;
            }
            Accepted::Own(Err(_)) => continue,
            Accepted::Stop => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                tracing::warn!(message = "Accept failed; backing off.", error = %e, backoff_ms = backoff.as_millis() as u64);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(peer);
        // Each session keeps the configuration it started with, to its end.
        let receiver = receivers.load_full();
        let permit = Arc::clone(&permits).try_acquire_owned();
        let slot = take_ip_slot(&receiver, peer);
        let shutdown = shutdown.clone();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let allowed = receiver
                .config
                .allowed_clients
                .as_ref()
                .is_none_or(|ranges| ranges.iter().any(|r| r.contains(peer.ip())));
            if !allowed {
                return refuse(
                    receiver.config.service,
                    stream,
                    "554 5.7.1 This service does not accept connections from your address\r\n",
                )
                .await;
            }
            match (permit, slot) {
                (Ok(_permit), Some(_slot)) => {
                    connection::run(Stream::Plain(stream), peer, local, receiver, shutdown).await;
                }
                (Err(_), _) => {
                    refuse(
                        receiver.config.service,
                        stream,
                        "421 4.3.2 Too many connections, try again later\r\n",
                    )
                    .await
                }
                (_, None) => {
                    refuse(
                        receiver.config.service,
                        stream,
                        "421 4.7.0 Too many connections from your address\r\n",
                    )
                    .await
                }
            }
        });
    }
    let last = receivers.load();
    drain(
        last.config.service,
        listener,
        tasks,
        last.config.drain_timeout,
    )
    .await;
}

/// Refuses new connections with 421 while the sessions end, for at most `timeout`.
async fn drain(
    service: Service,
    listener: TcpListener,
    mut tasks: tokio::task::JoinSet<()>,
    timeout: Duration,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut refusals = tokio::task::JoinSet::new();
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    refusals.spawn(refuse(
                        service,
                        stream,
                        "421 4.3.2 Service shutting down, try again later\r\n",
                    ));
                }
            }
            _ = &mut deadline => {
                tracing::warn!(message = "Drain timeout: closing the sessions still open.", sessions = tasks.len());
                tasks.abort_all();
                break;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    refusals.abort_all();
}

fn take_ip_slot(receiver: &Arc<Receiver>, peer: SocketAddr) -> Option<IpSlot> {
    let mut map = receiver.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(peer.ip()).or_insert(0);
    if *n >= receiver.config.max_connections_per_ip {
        return None;
    }
    *n += 1;
    Some(IpSlot {
        receiver: Arc::clone(receiver),
        ip: peer.ip(),
    })
}

async fn refuse(service: Service, mut stream: tokio::net::TcpStream, line: &str) {
    use tokio::io::AsyncWriteExt;
    crate::metrics::global()
        .smtp
        .replies(service, line.as_bytes());
    let _ = stream.write_all(line.as_bytes()).await;
    let _ = stream.shutdown().await;
}
