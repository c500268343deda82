//! SMTP send: a client for one transaction at a time, used between our services (Front End to
//! Transport, Transport to Mailbox Transport, Mailbox submission to Transport).
//!
//! Replies are parsed with `smtp-proto`; the message is dot-stuffed on the way out. Every reply
//! is kept, so the caller can pass the next hop's own answer back to its client.

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

/// The outcome for each recipient, and the final answer to the message.
#[derive(Debug)]
pub struct Sent {
    /// Per recipient: `Ok` or the server's refusal.
    pub recipients: Vec<(String, Result<(), SmtpResponse>)>,
    /// The answer after the message data (when at least one recipient was taken).
    pub data: Option<SmtpResponse>,
}

/// Whether a connection uses STARTTLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never (our own services on loopback).
    None,
    /// When the server offers it; plain text when it does not or the handshake fails.
    #[default]
    Opportunistic,
    /// Always: a server without STARTTLS, or a failed handshake, is a temporary failure.
    /// The certificate is not verified (as with opportunistic TLS).
    Required,
}

/// One SMTP client connection.
pub struct Client {
    peer: String,
    stream: Stream,
    input: Vec<u8>,
    timeout: Duration,
    extensions: Vec<String>,
    /// Whether the session runs over TLS.
    pub tls: bool,
}

impl Client {
    /// Connects and reads the greeting, then says EHLO as `helo`.
    pub async fn connect(addr: &str, helo: &str, timeout: Duration) -> Result<Self, SendError> {
        Self::connect_with(addr, helo, timeout, TlsMode::None).await
    }

    /// Connects, says EHLO, and negotiates STARTTLS as `tls` says.
    pub async fn connect_with(
        addr: &str,
        helo: &str,
        timeout: Duration,
        tls: TlsMode,
    ) -> Result<Self, SendError> {
        let mut client = Self::open(addr, helo, timeout).await?;
        if tls == TlsMode::None {
            return Ok(client);
        }
        if !client.offers("STARTTLS") {
            if tls == TlsMode::Required {
                return Err(SendError::Rejected(
                    addr.into(),
                    SmtpResponse::new(
                        451,
                        "4.7.4",
                        "The server does not offer STARTTLS, which this connector requires",
                    )
                    .expect("valid"),
                ));
            }
            return Ok(client);
        }
        match client.starttls(helo).await {
            Ok(()) => Ok(client),
            Err(e) if tls == TlsMode::Opportunistic => {
                tracing::info!(message = "STARTTLS failed; sending in plain text.", peer = %addr, error = %e);
                Self::open(addr, helo, timeout).await
            }
            Err(e) => Err(e),
        }
    }

    async fn open(addr: &str, helo: &str, timeout: Duration) -> Result<Self, SendError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| SendError::Connect(addr.into(), std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| SendError::Connect(addr.into(), e))?;
        let _ = stream.set_nodelay(true);
        let mut client = Self {
            peer: addr.to_string(),
            stream: Stream::Plain(stream),
            input: Vec::with_capacity(4096),
            timeout,
            extensions: Vec::new(),
            tls: false,
        };
        client.expect_ok().await?;
        client.ehlo(helo).await?;
        Ok(client)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<(), SendError> {
        self.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let reply = self.expect_ok().await?;
        self.extensions = reply
            .text()
            .lines()
            .skip(1)
            .map(|l| l.trim().to_ascii_uppercase())
            .collect();
        Ok(())
    }

    /// Whether the server offered an extension (`8BITMIME`, `STARTTLS`, `SIZE`...).
    pub fn offers(&self, keyword: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(keyword))
    }

    async fn starttls(&mut self, helo: &str) -> Result<(), SendError> {
        self.send(b"STARTTLS\r\n").await?;
        let go = self.read_reply().await?;
        if go.code() != 220 {
            return Err(SendError::Rejected(self.peer.clone(), go));
        }
        let Some(tcp) = self.stream.take_plain() else {
            return Err(SendError::Io(
                self.peer.clone(),
                "no plain connection".into(),
            ));
        };
        let host = self
            .peer
            .rsplit_once(':')
            .map_or(self.peer.as_str(), |(h, _)| h)
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(host).unwrap_or_else(|_| {
            rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
        });
        let connector = tokio_rustls::TlsConnector::from(crate::tls::client_config());
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| SendError::Io(self.peer.clone(), "TLS handshake timed out".into()))?
            .map_err(|e| SendError::Io(self.peer.clone(), format!("TLS handshake: {e}")))?;
        self.stream = Stream::ClientTls(Box::new(tls));
        self.tls = true;
        self.input.clear();
        self.ehlo(helo).await
    }

    /// Sends one message: MAIL, RCPT for each recipient, DATA.
    pub async fn send_mail(
        &mut self,
        from: &str,
        mail_params: &str,
        recipients: &[(String, String)],
        message: &[u8],
    ) -> Result<Sent, SendError> {
        let mut commands = format!("MAIL FROM:<{from}>{mail_params}\r\n");
        for (rcpt, params) in recipients {
            commands.push_str(&format!("RCPT TO:<{rcpt}>{params}\r\n"));
        }
        // PIPELINING: MAIL and every RCPT in one write, then read the replies in order.
        self.send(commands.as_bytes()).await?;
        let mail = self.read_reply().await?;
        let mut outcome = Vec::new();
        for (rcpt, _) in recipients {
            let r = self.read_reply().await?;
            outcome.push((rcpt.clone(), if r.is_success() { Ok(()) } else { Err(r) }));
        }
        if !mail.is_success() {
            self.send(b"RSET\r\n").await?;
            let _ = self.read_reply().await?;
            return Err(SendError::Rejected(self.peer.clone(), mail));
        }
        if outcome.iter().all(|(_, r)| r.is_err()) {
            self.send(b"RSET\r\n").await?;
            let _ = self.read_reply().await?;
            return Ok(Sent {
                recipients: outcome,
                data: None,
            });
        }
        self.send(b"DATA\r\n").await?;
        let go = self.read_reply().await?;
        if go.code() != 354 {
            return Err(SendError::Rejected(self.peer.clone(), go));
        }
        let stuffed = dot_stuff(message);
        self.send(&stuffed).await?;
        let data = self.read_reply().await?;
        Ok(Sent {
            recipients: outcome,
            data: Some(data),
        })
    }

    /// Says QUIT and closes.
    pub async fn quit(mut self) {
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

    async fn expect_ok(&mut self) -> Result<SmtpResponse, SendError> {
        let r = self.read_reply().await?;
        if r.is_success() {
            Ok(r)
        } else {
            Err(SendError::Rejected(self.peer.clone(), r))
        }
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
                            default_enhanced(response.code)
                        } else {
                            format!("{class}.{subject}.{detail}")
                        };
                        let text = response.message.replace('\r', "");
                        return SmtpResponse::new(
                            response.code,
                            enhanced,
                            text.trim_end().to_string(),
                        )
                        .or_else(|_| {
                            SmtpResponse::new(
                                response.code,
                                default_enhanced(response.code),
                                "(reply)",
                            )
                        })
                        .map_err(|e| {
                            SendError::Io(self.peer.clone(), format!("invalid reply: {e}"))
                        });
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
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.timeout, self.stream.read(&mut chunk))
                .await
                .map_err(|_| SendError::Io(self.peer.clone(), "timed out".into()))?
                .map_err(|e| SendError::Io(self.peer.clone(), e.to_string()))?;
            if n == 0 {
                return Err(SendError::Io(self.peer.clone(), "connection closed".into()));
            }
            self.input.extend_from_slice(&chunk[..n]);
        }
    }
}

fn default_enhanced(code: u16) -> String {
    match code / 100 {
        2 => "2.0.0".into(),
        4 => "4.0.0".into(),
        5 => "5.0.0".into(),
        _ => String::new(),
    }
}

/// Dot-stuffs a message and appends the terminating CRLF "." CRLF.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    for &b in message {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }
}
