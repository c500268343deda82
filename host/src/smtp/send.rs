//! SMTP and LMTP send: the client used between our services (Front End to Transport,
//! Transport to Mailbox Transport over LMTP, outbox submission to Transport) and towards next
//! hops (send connectors).
//!
//! It behaves as servers expect of a client: EHLO, falling back to HELO when the server does
//! not know EHLO; commands pipelined only when the server offers PIPELINING; the message
//! dot-stuffed by [`crate::smtp::data::DotStuffer`] as it is read (a spooled body a piece at a
//! time, never whole in memory); QUIT before every close it decides on.
//! Replies are parsed with `smtp-proto` and kept whole (made safe by
//! [`SmtpResponse::sanitized`], whatever the server sent), so the caller can pass the next
//! hop's own answer back to its client.

use crate::smtp::reply;
use crate::smtp::stream::Stream;
use mta_agent_sdk::SmtpResponse;
use smtp_proto::response::parser::ResponseReceiver;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a transaction did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Could not connect.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// The connection broke or timed out.
    #[error("connection to {0} failed: {1}")]
    Io(String, String),
    /// The server answered with an error.
    #[error("{0} answered {1}")]
    Rejected(String, SmtpResponse),
}

impl SendError {
    /// Whether the failure is permanent (a 5xx answer).
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Rejected(_, r) if r.is_permanent())
    }
}

/// What became of each recipient of a transaction, in the order given.
#[derive(Debug)]
pub struct Sent {
    /// `Ok`: the server took the message for this recipient (its reply); `Err`: it refused
    /// the recipient, or the message.
    pub recipients: Vec<Result<SmtpResponse, Refusal>>,
}

/// A refusal, and whether it came at RCPT (before any data was sent).
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The server's reply.
    pub response: SmtpResponse,
    /// The reply to RCPT TO (rather than to DATA or the data).
    pub at_rcpt: bool,
}

impl Refusal {
    /// "Too many recipients" (RFC 5321 4.5.3.1.10: 452, which some old servers send as 552):
    /// the recipient goes in another transaction at once. Only a reply to RCPT, and not one
    /// that names another cause (452 4.3.1 is a full disk).
    pub fn too_many_recipients(&self) -> bool {
        let r = &self.response;
        self.at_rcpt
            && (matches!(r.enhanced_code(), "4.5.3" | "5.5.3")
                || (r.code() == 452 && r.enhanced_code() == "4.0.0"))
    }
}

pub use crate::smtp::client_tls::{TlsMode, TlsTarget};

/// SMTP, or LMTP (RFC 2033: LHLO, and a reply per recipient after the data).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// SMTP.
    Smtp,
    /// LMTP.
    Lmtp,
}

/// One client connection.
pub struct Client {
    peer: String,
    stream: Stream,
    input: Vec<u8>,
    timeout: Duration,
    extensions: Vec<String>,
    esmtp: bool,
    protocol: Protocol,
    /// Whether the session runs over TLS.
    pub tls: bool,
}

/// How long a TCP connect may take unless told otherwise: a host that does not answer by then
/// is taken as down, so the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects over SMTP without TLS, reads the greeting, says EHLO as `helo`.
    pub async fn connect(addr: &str, helo: &str, timeout: Duration) -> Result<Self, SendError> {
        Self::connect_with(
            addr,
            helo,
            (timeout.min(CONNECT_TIMEOUT), timeout),
            &TlsTarget::plain(TlsMode::None),
            Protocol::Smtp,
        )
        .await
    }

    /// Connects, says EHLO (or LHLO), and negotiates STARTTLS as `tls` says. `timeouts` are
    /// the TCP connect's and every reply's (the greeting's included).
    pub async fn connect_with(
        addr: &str,
        helo: &str,
        timeouts: (Duration, Duration),
        tls: &TlsTarget,
        protocol: Protocol,
    ) -> Result<Self, SendError> {
        let mut client = Self::open(addr, helo, timeouts, protocol, None).await?;
        if tls.mode == TlsMode::None {
            return Ok(client);
        }
        if !client.offers("STARTTLS") {
            if tls.mode.required() {
                client.quit_ref().await;
                return Err(SendError::Rejected(
                    addr.into(),
                    reply(
                        451,
                        "4.7.4",
                        "The server does not offer STARTTLS, which this connector requires",
                    ),
                ));
            }
            return Ok(client);
        }
        match client.starttls(helo, tls).await {
            Ok(()) => Ok(client),
            Err(e) if tls.mode == TlsMode::Opportunistic => {
                tracing::info!(message = "STARTTLS failed; sending in plain text.", peer = %addr, error = %e);
                Self::open(addr, helo, timeouts, protocol, None).await
            }
            Err(e) => Err(e),
        }
    }

    /// Connects to one of our Transport nodes as a Front End (or Mailbox Transport) node:
    /// XCLIENT first, naming the client (`attributes`), then EHLO. A node that does not take
    /// XCLIENT from us is used all the same, as a plain SMTP server.
    pub async fn connect_naming(
        addr: &str,
        helo: &str,
        timeout: Duration,
        attributes: &str,
    ) -> Result<Self, SendError> {
        Self::open(
            addr,
            helo,
            (timeout.min(CONNECT_TIMEOUT), timeout),
            Protocol::Smtp,
            Some(attributes),
        )
        .await
    }

    async fn open(
        addr: &str,
        helo: &str,
        (connect, timeout): (Duration, Duration),
        protocol: Protocol,
        xclient: Option<&str>,
    ) -> Result<Self, SendError> {
        let timed_out = || SendError::Connect(addr.into(), std::io::ErrorKind::TimedOut.into());
        // `unix:PATH`: one of this host's services, over its socket in the data directory.
        let stream = if let Some(path) = addr.strip_prefix("unix:") {
            let stream = tokio::time::timeout(connect, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| SendError::Connect(addr.into(), e))?;
            Stream::Local(stream)
        } else {
            let stream = tokio::time::timeout(connect, TcpStream::connect(addr))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| SendError::Connect(addr.into(), e))?;
            let _ = stream.set_nodelay(true);
            Stream::Plain(stream)
        };
        let mut client = Self {
            peer: addr.to_string(),
            stream,
            input: Vec::with_capacity(4096),
            timeout,
            extensions: Vec::new(),
            esmtp: false,
            protocol,
            tls: false,
        };
        let greeting = client.read_reply().await?;
        if greeting.code() != 220 {
            client.quit_ref().await;
            return Err(SendError::Rejected(addr.into(), greeting));
        }
        if let Some(attributes) = xclient {
            let mut r = client.command(&format!("XCLIENT {attributes}")).await?;
            // A Transport node of an older release refuses attributes it does not know (501)
            // and applies none: name the client again without the newer ones, so that a Front
            // End upgraded first still names its clients (address, login, trust) during a
            // rolling upgrade.
            if r.code() == 501 {
                let older = without_newer_xclient_attributes(attributes);
                if older != attributes {
                    r = client.command(&format!("XCLIENT {older}")).await?;
                }
            }
            match r.code() {
                220 => {}
                // The node does not offer XCLIENT to us: go on as a plain client.
                500..=504 => {
                    tracing::debug!(message = "XCLIENT not taken.", peer = %addr, reply = %r)
                }
                // The node refused the client it names (its agents, at OnConnect).
                _ => {
                    client.quit_ref().await;
                    return Err(SendError::Rejected(addr.into(), r));
                }
            }
        }
        client.hello(helo).await?;
        Ok(client)
    }

    /// EHLO (LHLO for LMTP); HELO when the server does not know EHLO (RFC 5321 4.1.4).
    async fn hello(&mut self, helo: &str) -> Result<(), SendError> {
        let verb = match self.protocol {
            Protocol::Lmtp => "LHLO",
            Protocol::Smtp => "EHLO",
        };
        let r = self.command(&format!("{verb} {helo}")).await?;
        if r.is_success() {
            self.esmtp = true;
            self.extensions = r
                .text()
                .lines()
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect();
            return Ok(());
        }
        if self.protocol == Protocol::Smtp && r.is_permanent() {
            let r = self.command(&format!("HELO {helo}")).await?;
            if r.is_success() {
                self.esmtp = false;
                self.extensions.clear();
                return Ok(());
            }
            return Err(SendError::Rejected(self.peer.clone(), r));
        }
        Err(SendError::Rejected(self.peer.clone(), r))
    }

    /// Whether the server offered an extension (`8BITMIME`, `STARTTLS`, `SIZE`...).
    pub fn offers(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(keyword))
    }

    /// The server's address, as connected to.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    async fn starttls(&mut self, helo: &str, target: &TlsTarget) -> Result<(), SendError> {
        let go = self.command("STARTTLS").await?;
        if go.code() != 220 {
            return Err(SendError::Rejected(self.peer.clone(), go));
        }
        let Some(tcp) = self.stream.take_plain() else {
            return Err(SendError::Io(
                self.peer.clone(),
                "no plain connection".into(),
            ));
        };
        let (config, name) = crate::smtp::client_tls::client_config(target, &self.peer)
            .map_err(|e| SendError::Io(self.peer.clone(), e))?;
        let shown = match &name {
            rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_string(),
            other => format!("{other:?}"),
        };
        let connector = tokio_rustls::TlsConnector::from(config);
        let refused = |why: String| {
            // A level that checks the certificate reports why it failed, as the next hop's
            // answer would be: the queue shows it and the report carries it.
            if target.mode.required() {
                SendError::Rejected(
                    self.peer.clone(),
                    reply(451, "4.7.5", &format!("TLS with {shown} failed: {why}")),
                )
            } else {
                SendError::Io(self.peer.clone(), format!("TLS handshake: {why}"))
            }
        };
        let tls = match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Err(_) => return Err(refused("the handshake timed out".into())),
            Ok(Err(e)) => {
                tracing::info!(message = "Outbound TLS failed.", peer = %self.peer, name = %shown, level = ?target.mode, error = %e);
                return Err(refused(e.to_string()));
            }
            Ok(Ok(tls)) => tls,
        };
        {
            let (_, session) = tls.get_ref();
            tracing::info!(
                message = "Outbound TLS.",
                peer = %self.peer,
                name = %shown,
                version = %session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                cipher = %session.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
                verified = if target.dane.is_some() { "the exchanger's TLSA records (DANE)" } else { target.mode.verifies() },
            );
        }
        self.stream = Stream::ClientTls(Box::new(tls));
        self.tls = true;
        self.input.clear();
        self.hello(helo).await
    }

    /// Sends one command line and reads its reply.
    pub async fn command(&mut self, line: &str) -> Result<SmtpResponse, SendError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.send(&bytes).await?;
        self.read_reply().await
    }

    /// Sends the message data (after a 354) and reads the reply to it: one for SMTP, one per
    /// accepted recipient (`accepted`) for LMTP.
    ///
    /// A spooled body that cannot be read back breaks the connection off before the end of the
    /// data, so the server drops what it got.
    pub async fn message(
        &mut self,
        message: &crate::message::Message,
        accepted: usize,
    ) -> Result<Vec<SmtpResponse>, SendError> {
        use crate::message::body::CHUNK;
        let mut stuffer = crate::smtp::data::DotStuffer::new();
        let mut out = Vec::new();
        stuffer.push(&message.head(), &mut out);
        let body = message.body();
        if let Some(bytes) = body.in_memory() {
            stuffer.push(bytes, &mut out);
        } else {
            let mut offset = 0;
            loop {
                let chunk = body.chunk(offset).await.map_err(|e| {
                    SendError::Io(
                        self.peer.clone(),
                        format!("cannot read the spooled body: {e}"),
                    )
                })?;
                if chunk.is_empty() {
                    break;
                }
                offset += chunk.len() as u64;
                stuffer.push(&chunk, &mut out);
                if out.len() >= CHUNK {
                    self.send(&out).await?;
                    out.clear();
                }
            }
        }
        stuffer.finish(&mut out);
        self.send(&out).await?;
        drop(out);
        let replies = match self.protocol {
            Protocol::Smtp => 1,
            Protocol::Lmtp => accepted.max(1),
        };
        let mut out = Vec::with_capacity(replies);
        for _ in 0..replies {
            out.push(self.read_reply().await?);
        }
        Ok(out)
    }

    /// One transaction: MAIL, RCPT for each recipient (pipelined when the server offers it),
    /// DATA and the message. `mail_params` and each recipient's parameters are already
    /// encoded for the wire (see `transport::delivery::parameters`).
    pub async fn transaction(
        &mut self,
        from: &str,
        mail_params: &str,
        recipients: &[(String, String)],
        message: &crate::message::Message,
    ) -> Result<Sent, SendError> {
        let mail_line = format!("MAIL FROM:<{from}>{mail_params}");
        let rcpt_lines: Vec<String> = recipients
            .iter()
            .map(|(rcpt, params)| format!("RCPT TO:<{rcpt}>{params}"))
            .collect();
        let (mail, rcpts) = if self.offers("PIPELINING") {
            let mut commands = String::with_capacity(64 * (rcpt_lines.len() + 1));
            for line in std::iter::once(&mail_line).chain(&rcpt_lines) {
                commands.push_str(line);
                commands.push_str("\r\n");
            }
            self.send(commands.as_bytes()).await?;
            let mail = self.read_reply().await?;
            let mut rcpts = Vec::with_capacity(rcpt_lines.len());
            for _ in &rcpt_lines {
                rcpts.push(self.read_reply().await?);
            }
            (mail, rcpts)
        } else {
            let mail = self.command(&mail_line).await?;
            let mut rcpts = Vec::with_capacity(rcpt_lines.len());
            if mail.is_success() {
                for line in &rcpt_lines {
                    rcpts.push(self.command(line).await?);
                }
            }
            (mail, rcpts)
        };
        if !mail.is_success() {
            self.reset().await?;
            return Err(SendError::Rejected(self.peer.clone(), mail));
        }
        let at_rcpt = |response: SmtpResponse| Refusal {
            response,
            at_rcpt: true,
        };
        let after = |response: SmtpResponse| Refusal {
            response,
            at_rcpt: false,
        };
        let accepted = rcpts.iter().filter(|r| r.is_success()).count();
        if accepted == 0 {
            self.reset().await?;
            return Ok(Sent {
                recipients: rcpts.into_iter().map(|r| Err(at_rcpt(r))).collect(),
            });
        }
        let go = self.command("DATA").await?;
        if go.code() != 354 {
            self.reset().await?;
            return Ok(Sent {
                recipients: rcpts
                    .into_iter()
                    .map(|r| {
                        Err(if r.is_success() {
                            after(go.clone())
                        } else {
                            at_rcpt(r)
                        })
                    })
                    .collect(),
            });
        }
        let mut data = self.message(message, accepted).await?.into_iter();
        let single = match self.protocol {
            Protocol::Smtp => data.next(),
            Protocol::Lmtp => None,
        };
        let recipients = rcpts
            .into_iter()
            .map(|r| {
                if !r.is_success() {
                    return Err(at_rcpt(r));
                }
                let answer = single
                    .clone()
                    .or_else(|| data.next())
                    .unwrap_or_else(|| reply(451, "4.4.0", "No reply for this recipient"));
                if answer.is_success() {
                    Ok(answer)
                } else {
                    Err(after(answer))
                }
            })
            .collect();
        Ok(Sent { recipients })
    }

    /// RSET, so the connection can carry another transaction.
    pub async fn reset(&mut self) -> Result<(), SendError> {
        let r = self.command("RSET").await?;
        if r.is_success() {
            Ok(())
        } else {
            Err(SendError::Rejected(self.peer.clone(), r))
        }
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) {
        self.quit_ref().await;
    }

    async fn quit_ref(&mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        tokio::time::timeout(self.timeout, self.stream.write_all(bytes))
            .await
            .map_err(|_| SendError::Io(self.peer.clone(), "timed out".into()))?
            .map_err(|e| SendError::Io(self.peer.clone(), e.to_string()))
    }

    /// Reads one (possibly multi-line) reply.
    async fn read_reply(&mut self) -> Result<SmtpResponse, SendError> {
        let mut receiver = ResponseReceiver::default();
        loop {
            if !self.input.is_empty() {
                let mut bytes = self.input.iter();
                match receiver.parse(&mut bytes) {
                    Ok(response) => {
                        let consumed = self.input.len() - bytes.as_slice().len();
                        self.input.drain(..consumed);
                        let [class, subject, detail] = response.esc;
                        let enhanced = if class == 0 {
                            String::new()
                        } else {
                            format!("{class}.{subject}.{detail}")
                        };
                        return Ok(reply(response.code, &enhanced, response.message.trim_end()));
                    }
                    Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                        self.input.clear();
                    }
                    Err(e) => {
                        return Err(SendError::Io(
                            self.peer.clone(),
                            format!("invalid reply: {e:?}"),
                        ))
                    }
                }
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.input))
                .await
                .map_err(|_| SendError::Io(self.peer.clone(), "timed out".into()))?
                .map_err(|e| SendError::Io(self.peer.clone(), e.to_string()))?;
            if n == 0 {
                return Err(SendError::Io(self.peer.clone(), "connection closed".into()));
            }
        }
    }
}

/// XCLIENT attributes added by later releases of mta (`TLS`), which older Transport nodes refuse.
const NEWER_XCLIENT_ATTRIBUTES: [&str; 1] = ["TLS"];

/// `attributes` without those of [`NEWER_XCLIENT_ATTRIBUTES`].
fn without_newer_xclient_attributes(attributes: &str) -> String {
    attributes
        .split(' ')
        .filter(|a| {
            let name = a.split('=').next().unwrap_or("");
            !NEWER_XCLIENT_ATTRIBUTES
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
