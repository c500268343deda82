//! HTTP delivery: a delivery agent for the `HTTP` delivery protocol that hands the mail items of
//! a Delivery Agent connector's queue to an HTTP endpoint, one `POST` per recipient.
//!
//! Parameters:
//! - `url` (required): the endpoint, `http://host[:port][/path][?query]`. The host is a name, an
//!   IPv4 address or a bracketed IPv6 address (`http://[::1]:8080/mail`); the port defaults to
//!   80 and the path to `/`. Plain HTTP only: `https://` URLs, other schemes, user information
//!   (`user@host`), fragments and unencoded blanks or non-ASCII characters are refused when the
//!   agent is created;
//! - `timeout_ms` (optional, default 10000): how long one request may take, in milliseconds: to
//!   connect, send the message and receive the status line of the answer. Resolving the host
//!   name is not bounded by it.
//!
//! Events:
//! - OnOpenConnection registers the connection, naming `host:port` as the remote host;
//! - OnDeliverMailItem sends the whole message (raw MIME) once for each recipient, over a new
//!   connection each time:
//!
//!   ```text
//!   POST /path HTTP/1.1
//!   Host: host:port
//!   Content-Type: message/rfc822
//!   Content-Length: <length of the message>
//!   X-Mta-Recipient: <the recipient's address>
//!   X-Mta-Sender: <the envelope sender, <> for the null sender>
//!   Connection: close
//!   ```
//!
//!   and acknowledges the recipient from the status of the answer:
//!
//!   | answer | ack | response |
//!   |---|---|---|
//!   | 2xx | [`AckStatus::Success`] | `250 2.0.0` |
//!   | 4xx | [`AckStatus::Fail`] (the sender gets a non-delivery report) | `550 5.0.0` |
//!   | 5xx, no answer, connection error, timeout | [`AckStatus::Retry`] | `451 4.4.0` |
//!   | anything else (3xx: redirects are not followed; not HTTP) | [`AckStatus::Retry`] | `451 4.4.0` |
//!
//!   The response text carries the HTTP status or the error. Interim `1xx` answers are skipped.
//!   When the endpoint cannot be reached at all, the remaining recipients of the mail item are
//!   retried without a new attempt. An address holding control characters, which cannot go in
//!   an HTTP header field, fails with `550 5.1.3` (recipient) or `550 5.1.7` (sender);
//! - OnCloseConnection unregisters the connection.
//!
//! ```xml
//! <agent name="HTTP delivery" classFactory="Mta.Samples.HttpDeliveryFactory" ...>
//!   <parameter name="url" value="http://ticketing.example.test:8080/inbound/mail"/>
//!   <parameter name="timeout_ms" value="5000"/>
//! </agent>
//! ```

use mta_agent_sdk::prelude::*;
use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The `timeout_ms` used when the parameter is not given.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The longest status line, or interim answer, read from the endpoint.
const MAX_HEAD: usize = 8 * 1024;

/// The agent; one clone per delivery connection.
#[derive(Clone, Debug)]
pub struct HttpDelivery {
    endpoint: Endpoint,
    timeout: Duration,
}

impl HttpDelivery {
    /// The endpoint's `host:port` (IPv6 addresses in brackets): the remote host the connection
    /// is registered with, and the `Host` header field of each request.
    pub fn authority(&self) -> &str {
        &self.endpoint.authority
    }

    /// The time one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads the status of its answer.
    fn post(&self, mime: &[u8], recipient: &str, sender: &str) -> Result<StatusLine, Failure> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(deadline).map_err(Failure::Connect)?;
        let mut request = format!(
            "POST {path} HTTP/1.1\r\n\
             Host: {authority}\r\n\
             User-Agent: mta-http-delivery/{version}\r\n\
             Content-Type: message/rfc822\r\n\
             Content-Length: {length}\r\n\
             X-Mta-Recipient: {recipient}\r\n\
             X-Mta-Sender: {sender}\r\n\
             Connection: close\r\n\r\n",
            path = self.endpoint.path,
            authority = self.endpoint.authority,
            version = env!("CARGO_PKG_VERSION"),
            length = mime.len(),
        )
        .into_bytes();
        request.extend_from_slice(mime);
        let sent = remaining(deadline)
            .and_then(|left| stream.set_write_timeout(Some(left)))
            .and_then(|()| stream.write_all(&request))
            .and_then(|()| stream.flush());
        if let Err(e) = sent {
            return Err(Failure::Exchange(format!(
                "sending the request: {}",
                describe(&e)
            )));
        }
        read_status(&mut stream, deadline).map_err(Failure::Exchange)
    }

    /// Connects to the first address of the endpoint that answers before `deadline`.
    fn connect(&self, deadline: Instant) -> Result<TcpStream, String> {
        let host = self.endpoint.host.as_str();
        let addresses: Vec<SocketAddr> = (host, self.endpoint.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {host}: {}", describe(&e)))?
            .collect();
        let mut last_error = format!("{host} has no address");
        for address in addresses {
            let attempt =
                remaining(deadline).and_then(|left| TcpStream::connect_timeout(&address, left));
            match attempt {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = format!("connecting to {address}: {}", describe(&e)),
            }
        }
        Err(last_error)
    }
}

#[agent]
impl DeliveryAgent for HttpDelivery {
    const DELIVERY_PROTOCOL: &'static str = "HTTP";

    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let url = parameters.require("url")?;
        let endpoint = Endpoint::parse(url)
            .map_err(|e| AgentError::msg(format!("parameter \"url\" value {url:?}: {e}")))?;
        let timeout_ms = parameters
            .parse::<u64>("timeout_ms")?
            .unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(AgentError::msg(
                "parameter \"timeout_ms\" value \"0\": the timeout must be at least 1 millisecond",
            ));
        }
        Ok(Self {
            endpoint,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    fn on_open_connection(&mut self, event: &mut OpenConnectionEvent<'_>) -> AgentResult {
        let response = SmtpResponse::new(250, "2.0.0", "connected")?;
        event.register_connection(&self.endpoint.authority, &response)
    }

    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        let (mime, from, recipients) = {
            let item = event.mail_item();
            (item.mime(), item.from(), item.recipients())
        };
        let sender = if from.is_empty() {
            "<>".to_string()
        } else {
            from
        };
        let mut unreachable: Option<String> = None;
        for recipient in &recipients {
            let address = recipient.address.as_str();
            let (status, response) = if !header_safe(address) {
                let text = "Recipient address cannot be sent in an HTTP header field";
                (AckStatus::Fail, SmtpResponse::new(550, "5.1.3", text)?)
            } else if !header_safe(&sender) {
                let text = "Sender address cannot be sent in an HTTP header field";
                (AckStatus::Fail, SmtpResponse::new(550, "5.1.7", text)?)
            } else {
                let outcome = match &unreachable {
                    Some(reason) => Err(Failure::Connect(reason.clone())),
                    None => self.post(&mime, address, &sender),
                };
                if let Err(Failure::Connect(reason)) = &outcome {
                    unreachable = Some(reason.clone());
                }
                acknowledgement(&outcome, &self.endpoint.authority)?
            };
            event.ack_recipient(address, status, &response)?;
        }
        Ok(())
    }

    fn on_close_connection(&mut self, event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        event.unregister_connection()
    }
}

export_agents!("Mta.Samples.HttpDeliveryFactory" => HttpDelivery);

/// Where requests go, from the `url` parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    /// The host to resolve: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// `host:port`, IPv6 in brackets.
    authority: String,
    /// The request target: path and query, starting with `/`.
    path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/path][?query]`.
    fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(
                "a URL holds no blanks, control or non-ASCII characters (percent-encode them)"
                    .into(),
            );
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("expected http://host[:port][/path]".into());
        };
        if scheme.eq_ignore_ascii_case("https") {
            return Err(
                "https is not supported: this agent speaks plain HTTP only (use http://)".into(),
            );
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(format!(
                "scheme {scheme:?} is not supported: expected http://"
            ));
        }
        if rest.contains('#') {
            return Err("a fragment (#...) is not sent to a server; remove it".into());
        }
        let (authority, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err("user information (user@host) is not supported".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (address, tail) = bracketed
                .split_once(']')
                .ok_or("an IPv6 address must be closed with ]")?;
            address
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{address:?} is not an IPv6 address"))?;
            let port = match tail {
                "" => None,
                _ => Some(tail.strip_prefix(':').ok_or("expected :port after ]")?),
            };
            (address, port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err("the URL has no host".into());
            }
            if !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(format!(
                    "{host:?} is not a host name or IPv4 address (IPv6 goes in brackets)"
                ));
            }
            (host, port)
        };
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&n| n != 0 && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
        };
        let path = match target.strip_prefix('?') {
            Some(_) => format!("/{target}"),
            None if target.is_empty() => "/".to_string(),
            None => target.to_string(),
        };
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            host: host.to_string(),
            port,
            authority,
            path,
        })
    }
}

/// The status line of the endpoint's final answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StatusLine {
    code: u16,
    reason: String,
}

impl StatusLine {
    /// Parses `HTTP/x.y NNN reason`.
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("HTTP/")?;
        let (version, rest) = rest.split_once(' ')?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return None;
        }
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let code = code.parse().ok().filter(|c| (100..=599).contains(c))?;
        Some(Self {
            code,
            reason: clean(reason.trim()),
        })
    }
}

impl std::fmt::Display for StatusLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.reason.is_empty() {
            write!(f, " {}", self.reason)?;
        }
        Ok(())
    }
}

/// Why a request got no status.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failure {
    /// The endpoint could not be reached.
    Connect(String),
    /// The endpoint was reached, but sending or reading failed.
    Exchange(String),
}

/// The ack, and its response, for the outcome of one request.
fn acknowledgement(
    outcome: &Result<StatusLine, Failure>,
    authority: &str,
) -> Result<(AckStatus, SmtpResponse), AgentError> {
    let (status, code, enhanced, text) = match outcome {
        Ok(s) if (200..300).contains(&s.code) => (
            AckStatus::Success,
            250,
            "2.0.0",
            format!("Delivered to HTTP endpoint {authority}: {s}"),
        ),
        Ok(s) if (400..500).contains(&s.code) => (
            AckStatus::Fail,
            550,
            "5.0.0",
            format!("HTTP endpoint {authority} refused the message: {s}"),
        ),
        Ok(s) if (500..600).contains(&s.code) => (
            AckStatus::Retry,
            451,
            "4.4.0",
            format!("HTTP endpoint {authority} failed: {s}"),
        ),
        Ok(s) => (
            AckStatus::Retry,
            451,
            "4.4.0",
            format!("HTTP endpoint {authority} gave an answer this agent does not handle: {s}"),
        ),
        Err(Failure::Connect(reason)) => (
            AckStatus::Retry,
            451,
            "4.4.0",
            format!("HTTP endpoint {authority} unreachable: {reason}"),
        ),
        Err(Failure::Exchange(reason)) => (
            AckStatus::Retry,
            451,
            "4.4.0",
            format!("HTTP delivery to {authority} failed: {reason}"),
        ),
    };
    // The text holds what the endpoint said: `sanitized` makes any of it a valid reply line.
    Ok((status, SmtpResponse::sanitized(code, enhanced, &text)))
}

/// What a buffer holds of the answer.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not a whole status line (or interim answer) yet.
    Incomplete,
    /// An interim `1xx` answer of this many bytes, to skip.
    Interim(usize),
    /// The final status line.
    Final(StatusLine),
    /// Not an HTTP answer.
    Invalid(String),
}

fn parse_head(buffer: &[u8]) -> Head {
    let Some(end_of_line) = buffer.iter().position(|&b| b == b'\n') else {
        return Head::Incomplete;
    };
    let line = String::from_utf8_lossy(&buffer[..end_of_line]);
    let line = line.trim_end_matches('\r');
    let Some(status) = StatusLine::parse(line) else {
        return Head::Invalid(format!("not an HTTP answer: {:?}", clean(line)));
    };
    if status.code >= 200 {
        return Head::Final(status);
    }
    let blank_line = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|end| {
            buffer
                .windows(end.len())
                .position(|w| w == *end)
                .map(|at| at + end.len())
        })
        .min();
    blank_line.map_or(Head::Incomplete, Head::Interim)
}

/// Reads until the final status line, skipping interim answers.
fn read_status(stream: &mut TcpStream, deadline: Instant) -> Result<StatusLine, String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match parse_head(&buffer) {
            Head::Final(status) => return Ok(status),
            Head::Interim(length) => {
                buffer.drain(..length);
                continue;
            }
            Head::Invalid(reason) => return Err(reason),
            Head::Incomplete if buffer.len() > MAX_HEAD => {
                return Err(format!("no status line in the first {MAX_HEAD} bytes"));
            }
            Head::Incomplete => {}
        }
        let read = remaining(deadline)
            .and_then(|left| stream.set_read_timeout(Some(left)))
            .and_then(|()| stream.read(&mut chunk));
        match read {
            Ok(0) => return Err("the connection closed before a status line".into()),
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the answer: {}", describe(&e))),
        }
    }
}

/// The time left until `deadline`, or a timeout error when it passed.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    Some(deadline.saturating_duration_since(Instant::now()))
        .filter(|left| !left.is_zero())
        .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
}

/// An I/O error as response text; both kinds of timeout read `timed out`.
fn describe(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed out".to_string(),
        _ => clean(&error.to_string()),
    }
}

/// Text from the endpoint or the system, made safe for a response: one line, at most 200 bytes.
fn clean(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(&line, 200).to_string()
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether a value can go in an HTTP header field as is.
fn header_safe(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    const RAW: &[u8] = b"From: sender@example.test\r\nTo: a@example.test\r\nSubject: ticket\r\n\r\nThe printer is on fire.\r\n";

    /// One request as the test server received it.
    #[derive(Clone, Debug)]
    struct Request {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// A tiny HTTP server on 127.0.0.1: records each request, then writes what `answer` returns
    /// for it (`None`: keeps the connection open without answering).
    struct Server {
        address: SocketAddr,
        requests: Arc<Mutex<Vec<Request>>>,
    }

    impl Server {
        fn start(answer: impl Fn(&Request) -> Option<String> + Send + 'static) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&requests);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let Some(request) = read_request(&stream) else {
                        continue;
                    };
                    let reply = answer(&request);
                    recorded.lock().unwrap().push(request);
                    match reply {
                        Some(reply) => {
                            let _ = stream.write_all(reply.as_bytes());
                        }
                        None => held.push(stream),
                    }
                }
            });
            Self { address, requests }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.address)
        }

        fn requests(&self) -> Vec<Request> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn read_request(stream: &TcpStream) -> Option<Request> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).ok()?;
            let field = line.trim_end_matches(['\r', '\n']);
            if field.is_empty() {
                break;
            }
            let (name, value) = field.split_once(':')?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).ok()?;
        Some(Request {
            method,
            target,
            headers,
            body,
        })
    }

    fn status(code: u16, reason: &str) -> String {
        format!("HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    fn deliver(agent: &mut HttpDelivery, from: &str, recipients: &[&str]) -> TestHost {
        let message = TestMessage::parse(RAW).with_envelope(from, recipients);
        let mut host = TestHost::for_message(message).with_arg("next_hop_domain", "HTTP");
        testing::run(agent, Event::OnDeliverMailItem, &mut host).unwrap();
        host
    }

    /// The recipient acks recorded, as (recipient, status, response).
    fn acks(host: &TestHost) -> Vec<(String, AckStatus, SmtpResponse)> {
        host.actions
            .iter()
            .map(|action| match action {
                Action::AckRecipient {
                    recipient,
                    status,
                    response,
                } => (recipient.clone(), *status, response.clone()),
                other => panic!("unexpected action {other:?}"),
            })
            .collect()
    }

    #[test]
    fn posts_once_per_recipient_and_acks_by_http_status() {
        let server = Server::start(|request| {
            Some(match request.header("X-Mta-Recipient").unwrap() {
                "ok@example.test" => status(200, "OK"),
                "queued@example.test" => status(202, "Accepted"),
                "gone@example.test" => status(404, "Not Found"),
                _ => status(503, "Service Unavailable"),
            })
        });
        let url = server.url("/inbound/mail?queue=1");
        let mut agent = testing::create::<HttpDelivery>(&[("url", &url)]).unwrap();
        let recipients = [
            "ok@example.test",
            "gone@example.test",
            "busy@example.test",
            "queued@example.test",
        ];
        let host = deliver(&mut agent, "sender@example.test", &recipients);

        let acks = acks(&host);
        let summary: Vec<_> = acks
            .iter()
            .map(|(r, s, resp)| (r.as_str(), *s, resp.code(), resp.enhanced_code()))
            .collect();
        assert_eq!(
            summary,
            [
                ("ok@example.test", AckStatus::Success, 250, "2.0.0"),
                ("gone@example.test", AckStatus::Fail, 550, "5.0.0"),
                ("busy@example.test", AckStatus::Retry, 451, "4.4.0"),
                ("queued@example.test", AckStatus::Success, 250, "2.0.0"),
            ]
        );
        assert!(acks[0].2.text().contains("200 OK"), "{}", acks[0].2);
        assert!(acks[1].2.text().contains("404 Not Found"), "{}", acks[1].2);
        assert!(
            acks[2].2.text().contains("503 Service Unavailable"),
            "{}",
            acks[2].2
        );

        let requests = server.requests();
        let expected_body = TestMessage::parse(RAW).to_mime();
        assert_eq!(requests.len(), 4);
        for (request, recipient) in requests.iter().zip(recipients) {
            assert_eq!(request.method, "POST");
            assert_eq!(request.target, "/inbound/mail?queue=1");
            assert_eq!(request.header("X-Mta-Recipient"), Some(recipient));
            assert_eq!(request.header("X-Mta-Sender"), Some("sender@example.test"));
            assert_eq!(request.header("Content-Type"), Some("message/rfc822"));
            assert_eq!(request.header("Connection"), Some("close"));
            assert_eq!(request.header("Host"), Some(agent.authority()));
            assert_eq!(
                request.header("Content-Length"),
                Some(expected_body.len().to_string().as_str())
            );
            assert_eq!(request.body, expected_body);
            assert!(String::from_utf8_lossy(&request.body).contains("The printer is on fire."));
        }
    }

    #[test]
    fn null_sender_is_sent_as_angle_brackets() {
        let server = Server::start(|_| Some(status(204, "No Content")));
        let mut agent = testing::create::<HttpDelivery>(&[("url", &server.url(""))]).unwrap();
        let host = deliver(&mut agent, "", &["a@example.test"]);
        assert_eq!(acks(&host)[0].1, AckStatus::Success);
        let requests = server.requests();
        assert_eq!(requests[0].target, "/");
        assert_eq!(requests[0].header("X-Mta-Sender"), Some("<>"));
    }

    #[test]
    fn unreachable_endpoint_retries_every_recipient() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/mail", closed.local_addr().unwrap());
        drop(closed);
        let mut agent = testing::create::<HttpDelivery>(&[("url", &url)]).unwrap();
        let host = deliver(
            &mut agent,
            "s@example.test",
            &["a@example.test", "b@example.test"],
        );
        let acks = acks(&host);
        assert_eq!(acks.len(), 2);
        for (_, status, response) in &acks {
            assert_eq!(*status, AckStatus::Retry);
            assert_eq!((response.code(), response.enhanced_code()), (451, "4.4.0"));
            assert!(response.text().contains("unreachable"), "{response}");
        }
    }

    #[test]
    fn silent_endpoint_times_out_and_retries() {
        let server = Server::start(|_| None);
        let mut agent =
            testing::create::<HttpDelivery>(&[("url", &server.url("/")), ("timeout_ms", "300")])
                .unwrap();
        let started = Instant::now();
        let host = deliver(&mut agent, "s@example.test", &["a@example.test"]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let acks = acks(&host);
        assert_eq!(acks[0].1, AckStatus::Retry);
        assert_eq!(acks[0].2.code(), 451);
        assert!(acks[0].2.text().contains("timed out"), "{}", acks[0].2);
        // The message got there; only the answer was missing.
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn interim_answers_are_skipped() {
        let server = Server::start(|_| {
            Some(format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n{}",
                status(201, "Created")
            ))
        });
        let mut agent = testing::create::<HttpDelivery>(&[("url", &server.url("/"))]).unwrap();
        let host = deliver(&mut agent, "s@example.test", &["a@example.test"]);
        let acks = acks(&host);
        assert_eq!(acks[0].1, AckStatus::Success, "{}", acks[0].2);
        assert!(acks[0].2.text().contains("201 Created"));
    }

    #[test]
    fn redirects_garbage_and_silence_are_retried() {
        let server = Server::start(|request| {
            Some(match request.header("X-Mta-Recipient").unwrap() {
                "redirect@example.test" => status(301, "Moved Permanently"),
                "garbage@example.test" => "220 smtp.example.test ESMTP\r\n".to_string(),
                _ => String::new(),
            })
        });
        let mut agent = testing::create::<HttpDelivery>(&[("url", &server.url("/"))]).unwrap();
        let recipients = [
            "redirect@example.test",
            "garbage@example.test",
            "silent@example.test",
        ];
        let host = deliver(&mut agent, "s@example.test", &recipients);
        let acks = acks(&host);
        assert_eq!(acks.len(), 3);
        for (_, status, response) in &acks {
            assert_eq!(*status, AckStatus::Retry, "{response}");
            assert_eq!(response.code(), 451);
        }
        assert!(acks[0].2.text().contains("301"), "{}", acks[0].2);
        assert!(
            acks[1].2.text().contains("not an HTTP answer"),
            "{}",
            acks[1].2
        );
        assert!(acks[2].2.text().contains("closed"), "{}", acks[2].2);
        // A failure after connecting does not stop the next recipients from being tried.
        assert_eq!(server.requests().len(), 3);
    }

    #[test]
    fn addresses_that_cannot_be_header_fields_fail_without_a_request() {
        let server = Server::start(|_| Some(status(200, "OK")));
        let mut agent = testing::create::<HttpDelivery>(&[("url", &server.url("/"))]).unwrap();
        let evil = "a@example.test\r\nX-Injected: yes";
        let host = deliver(&mut agent, "s@example.test", &[evil, "b@example.test"]);
        let first = acks(&host);
        assert_eq!(first[0].0, evil);
        assert_eq!(first[0].1, AckStatus::Fail);
        assert_eq!(first[0].2.enhanced_code(), "5.1.3");
        assert_eq!(first[1].1, AckStatus::Success);
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].header("X-Injected"), None);

        let host = deliver(&mut agent, "s@x\nY: z", &["b@example.test"]);
        let (_, status, response) = &acks(&host)[0];
        assert_eq!(*status, AckStatus::Fail);
        assert_eq!(response.enhanced_code(), "5.1.7");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn open_registers_and_close_unregisters_the_connection() {
        let mut agent =
            testing::create::<HttpDelivery>(&[("url", "http://mail-in.example.test:8025/x")])
                .unwrap();
        let message = TestMessage::parse(RAW).with_envelope("s@example.test", &["a@example.test"]);
        let mut host = TestHost::for_message(message).with_arg("next_hop_domain", "HTTP");
        testing::run(&mut agent, Event::OnOpenConnection, &mut host).unwrap();
        testing::run(&mut agent, Event::OnCloseConnection, &mut host).unwrap();
        assert_eq!(
            host.actions,
            [
                Action::RegisterConnection {
                    remote_host: "mail-in.example.test:8025".into(),
                    response: SmtpResponse::new(250, "2.0.0", "connected").unwrap(),
                },
                Action::UnregisterConnection,
            ]
        );
    }

    #[test]
    fn urls_parse_into_host_port_and_target() {
        let cases = [
            (
                "http://example.test",
                "example.test",
                80,
                "example.test:80",
                "/",
            ),
            (
                "HTTP://Example.test:8080/a/b",
                "Example.test",
                8080,
                "Example.test:8080",
                "/a/b",
            ),
            (
                "http://192.0.2.1:81?x=1",
                "192.0.2.1",
                81,
                "192.0.2.1:81",
                "/?x=1",
            ),
            ("http://[::1]:8080/mail", "::1", 8080, "[::1]:8080", "/mail"),
            (
                "http://[2001:db8::5]",
                "2001:db8::5",
                80,
                "[2001:db8::5]:80",
                "/",
            ),
            (
                " http://h_1.example.test/ ",
                "h_1.example.test",
                80,
                "h_1.example.test:80",
                "/",
            ),
        ];
        for (url, host, port, authority, path) in cases {
            let endpoint = Endpoint::parse(url).unwrap();
            assert_eq!(
                (
                    endpoint.host.as_str(),
                    endpoint.port,
                    endpoint.authority.as_str(),
                    endpoint.path.as_str()
                ),
                (host, port, authority, path),
                "{url}"
            );
        }
    }

    #[test]
    fn refuses_https_and_malformed_urls() {
        let https = testing::create::<HttpDelivery>(&[("url", "https://example.test/")])
            .unwrap_err()
            .to_string();
        assert!(
            https.contains("\"url\"") && https.contains("https is not supported"),
            "{https}"
        );
        for url in [
            "example.test/mail",
            "ftp://example.test/",
            "http://",
            "http:///path",
            "http://example.test:/",
            "http://example.test:0/",
            "http://example.test:65536/",
            "http://example.test:8o/",
            "http://example.test:+80/",
            "http://user:pw@example.test/",
            "http://exa mple.test/",
            "http://example.test/a b",
            "http://example.test/#top",
            "http://exämple.test/",
            "http://::1/",
            "http://[::1/",
            "http://[::1]x/",
            "http://[example.test]/",
        ] {
            let error = testing::create::<HttpDelivery>(&[("url", url)]).unwrap_err();
            assert!(error.to_string().contains("\"url\""), "{url}: {error}");
        }
        let missing = testing::create::<HttpDelivery>(&[]).unwrap_err();
        assert!(missing.to_string().contains("\"url\""), "{missing}");
    }

    #[test]
    fn timeout_parameter() {
        let url = ("url", "http://example.test/");
        let agent = testing::create::<HttpDelivery>(&[url]).unwrap();
        assert_eq!(agent.timeout(), Duration::from_millis(DEFAULT_TIMEOUT_MS));
        let agent = testing::create::<HttpDelivery>(&[url, ("timeout_ms", "2500")]).unwrap();
        assert_eq!(agent.timeout(), Duration::from_millis(2500));
        for bad in ["0", "-1", "soon", ""] {
            let error = testing::create::<HttpDelivery>(&[url, ("timeout_ms", bad)]).unwrap_err();
            assert!(
                error.to_string().contains("\"timeout_ms\""),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn status_lines_and_interim_heads() {
        let parse = |line: &str| StatusLine::parse(line).map(|s| s.to_string());
        assert_eq!(parse("HTTP/1.1 200 OK").as_deref(), Some("200 OK"));
        assert_eq!(
            parse("HTTP/1.0 404 Not Found").as_deref(),
            Some("404 Not Found")
        );
        assert_eq!(parse("HTTP/2 503").as_deref(), Some("503"));
        assert_eq!(parse("HTTP/1.1 20 OK"), None);
        assert_eq!(parse("HTTP/1.1 600 Nope"), None);
        assert_eq!(parse("HTTP/1.1 2000 OK"), None);
        assert_eq!(parse("HTTP/x 200 OK"), None);
        assert_eq!(parse("SMTP/1.1 200 OK"), None);

        assert_eq!(parse_head(b"HTTP/1.1 200 O"), Head::Incomplete);
        assert_eq!(parse_head(b"HTTP/1.1 100 Continue\r\n"), Head::Incomplete);
        assert_eq!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1"),
            Head::Interim(25)
        );
        assert_eq!(
            parse_head(b"HTTP/1.1 100 Continue\n\nHTTP/1.1"),
            Head::Interim(23)
        );
        assert!(matches!(parse_head(b"garbage\r\n"), Head::Invalid(_)));
        assert_eq!(
            parse_head(b"HTTP/1.1 500 Internal Server Error\r\n"),
            Head::Final(StatusLine {
                code: 500,
                reason: "Internal Server Error".into()
            })
        );
    }

    #[test]
    fn acknowledgement_maps_outcomes() {
        let status = |code| {
            acknowledgement(
                &Ok(StatusLine {
                    code,
                    reason: "R".into(),
                }),
                "h:1",
            )
            .unwrap()
        };
        assert_eq!(status(299).0, AckStatus::Success);
        assert_eq!(status(400).0, AckStatus::Fail);
        assert_eq!(status(499).1.code(), 550);
        assert_eq!(status(500).0, AckStatus::Retry);
        assert_eq!(status(302).0, AckStatus::Retry);
        let (ack, response) =
            acknowledgement(&Err(Failure::Exchange("x".repeat(1000))), "h:1").unwrap();
        assert_eq!((ack, response.code()), (AckStatus::Retry, 451));
        assert!(response.text().len() <= 500);
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(clean("a\r\nb"), "a  b");
    }

    #[test]
    fn declares_its_protocol_and_three_events() {
        assert_eq!(<HttpDelivery as DeliveryAgent>::DELIVERY_PROTOCOL, "HTTP");
        assert_eq!(
            HttpDelivery::EVENTS.iter().collect::<Vec<_>>(),
            [
                Event::OnOpenConnection,
                Event::OnDeliverMailItem,
                Event::OnCloseConnection
            ]
        );
    }
}
