//! A scriptable SMTP server standing in for a next hop (a smart host, a remote MX): it records
//! every connection byte for byte, so tests can assert on exactly what mta sent.
//!
//! Defaults: EHLO answered with PIPELINING, 8BITMIME, DSN, SMTPUTF8 and SIZE; every command
//! answered 250; no recipient limit. Each [`PeerConfig`] field changes one behaviour.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the peer behaves.
#[derive(Clone)]
pub struct PeerConfig {
    /// The greeting, CRLF-terminated lines included (default `220 peer.test ESMTP\r\n`).
    pub greeting: String,
    /// Whether EHLO is understood (false: `502 5.5.1` to EHLO, HELO works).
    pub ehlo: bool,
    /// EHLO keywords after the first line.
    pub extensions: Vec<String>,
    /// Recipients taken per transaction; the next ones get `452 4.5.3`.
    pub max_recipients: usize,
    /// A recipient (lower case) and the whole reply it gets, CRLF-terminated lines included.
    pub rcpt_replies: Vec<(String, String)>,
    /// The reply to MAIL FROM, CRLF-terminated (default `250 2.1.0 Ok`).
    pub mail_reply: String,
    /// XCLIENT is taken (220) when it names none of `xclient_unknown`, which get `501`, as an
    /// older server answers attributes it does not know. Default: not offered (`502`).
    pub xclient: bool,
    /// XCLIENT attributes this peer does not know.
    pub xclient_unknown: Vec<String>,
    /// The reply after the message data.
    pub data_reply: String,
    /// How long to wait before each reply, the greeting included (a slow next hop).
    pub delay: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            greeting: "220 peer.test ESMTP\r\n".into(),
            ehlo: true,
            extensions: [
                "PIPELINING",
                "8BITMIME",
                "DSN",
                "SMTPUTF8",
                "SIZE 100000000",
            ]
            .map(String::from)
            .to_vec(),
            max_recipients: usize::MAX,
            rcpt_replies: Vec::new(),
            mail_reply: "250 2.1.0 Ok\r\n".into(),
            xclient: false,
            xclient_unknown: Vec::new(),
            data_reply: "250 2.0.0 Ok: queued\r\n".into(),
            delay: Duration::ZERO,
        }
    }
}

/// What one connection carried.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Every command line, without its CRLF.
    pub commands: Vec<String>,
    /// The messages: the data as it came on the wire (dot-stuffed, without the final `.` line).
    pub raw_messages: Vec<Vec<u8>>,
    /// The recipients the peer took (250) in each transaction that ended with a message.
    pub delivered_to: Vec<Vec<String>>,
    /// Whether the client said QUIT.
    pub quit: bool,
    /// Whether the client sent a command before the reply to the previous one (pipelining).
    pub sent_ahead: bool,
    /// Whether the connection has ended.
    pub closed: bool,
}

impl Connection {
    /// The messages with dot-stuffing undone (a dot starting a line, after CRLF, removed).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.raw_messages.iter().map(|m| unstuff(m)).collect()
    }

    /// The RCPT TO addresses, in order.
    pub fn recipients(&self) -> Vec<String> {
        self.commands
            .iter()
            .filter(|c| c.to_ascii_uppercase().starts_with("RCPT TO:"))
            .filter_map(|c| Some(c.split_once('<')?.1.split_once('>')?.0.to_string()))
            .collect()
    }
}

/// Undoes dot-stuffing exactly as RFC 5321 4.5.2 says: a line (after CRLF) that starts with a
/// dot loses that dot.
pub fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !(at_line_start && b == b'.') {
            out.push(b);
        }
        at_line_start = b == b'\n' && i > 0 && raw[i - 1] == b'\r';
        i += 1;
    }
    out
}

/// A running peer.
pub struct Peer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    connections: Arc<Mutex<Vec<Connection>>>,
}

impl Peer {
    /// Starts a peer with the default behaviour.
    pub fn start() -> Peer {
        Peer::with(PeerConfig::default())
    }

    /// Starts a peer configured by `config`.
    pub fn with(config: PeerConfig) -> Peer {
        Peer::listen(TcpListener::bind("127.0.0.1:0").unwrap(), config)
    }

    /// Starts a peer on `port` (a next hop that comes up where mta has been trying).
    pub fn on_port(port: u16, config: PeerConfig) -> Peer {
        Peer::listen(TcpListener::bind(("127.0.0.1", port)).unwrap(), config)
    }

    fn listen(listener: TcpListener, config: PeerConfig) -> Peer {
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let index = {
                    let mut all = shared.lock().unwrap();
                    all.push(Connection::default());
                    all.len() - 1
                };
                let (config, shared) = (config.clone(), Arc::clone(&shared));
                std::thread::spawn(move || serve(stream, &config, &shared, index));
            }
        });
        Peer { port, connections }
    }

    /// `127.0.0.1:port`, for a smart host entry.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A copy of every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }

    /// Every message of every connection, dot-stuffing undone.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.connections()
            .iter()
            .flat_map(Connection::messages)
            .collect()
    }

    /// Every recipient the peer took a message for, over every connection, in order.
    pub fn delivered_to(&self) -> Vec<String> {
        self.connections()
            .iter()
            .flat_map(|c| c.delivered_to.concat())
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    config: &PeerConfig,
    shared: &Arc<Mutex<Vec<Connection>>>,
    index: usize,
) {
    let record = |f: &mut dyn FnMut(&mut Connection)| f(&mut shared.lock().unwrap()[index]);
    let mut out = stream.try_clone().unwrap();
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut reader = BufReader::new(stream);
    std::thread::sleep(config.delay);
    let _ = out.write_all(config.greeting.as_bytes());
    if !config.greeting.starts_with("220") {
        record(&mut |c| c.closed = true);
        return;
    }
    let pipelining = config.ehlo && config.extensions.iter().any(|e| e == "PIPELINING");
    let mut accepted: Vec<String> = Vec::new();
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !pipelining && sent_ahead(&mut reader) {
            record(&mut |c| c.sent_ahead = true);
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        record(&mut |c| c.commands.push(text.clone()));
        let verb = text
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" if !config.ehlo => "502 5.5.1 EHLO not understood\r\n".to_string(),
            "EHLO" => {
                let mut lines = vec!["peer.test".to_string()];
                lines.extend(config.extensions.iter().cloned());
                multiline(250, &lines)
            }
            "HELO" => "250 peer.test\r\n".into(),
            "MAIL" => {
                accepted.clear();
                config.mail_reply.clone()
            }
            "RSET" => {
                accepted.clear();
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" => {
                let address = text
                    .split_once('<')
                    .and_then(|(_, r)| r.split_once('>'))
                    .map(|(a, _)| a.to_ascii_lowercase())
                    .unwrap_or_default();
                if let Some((_, reply)) = config.rcpt_replies.iter().find(|(a, _)| *a == address) {
                    reply.clone()
                } else if accepted.len() >= config.max_recipients {
                    "452 4.5.3 Too many recipients\r\n".into()
                } else {
                    accepted.push(address);
                    "250 2.1.5 Ok\r\n".into()
                }
            }
            "DATA" => {
                std::thread::sleep(config.delay);
                let _ = out.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                let Some(raw) = read_data(&mut reader) else {
                    break;
                };
                let to = std::mem::take(&mut accepted);
                record(&mut |c| {
                    c.raw_messages.push(raw.clone());
                    c.delivered_to.push(to.clone());
                });
                config.data_reply.clone()
            }
            // Not offered: as a server that does not know the command.
            "XCLIENT" if !config.xclient => "502 5.5.1 Command not recognized\r\n".into(),
            "XCLIENT" => {
                let unknown = text.split(' ').skip(1).find(|a| {
                    let name = a.split('=').next().unwrap_or("");
                    config
                        .xclient_unknown
                        .iter()
                        .any(|u| u.eq_ignore_ascii_case(name))
                });
                match unknown {
                    Some(a) => format!("501 5.5.4 Invalid XCLIENT attribute {a}\r\n"),
                    None => "220 peer.test ESMTP\r\n".into(),
                }
            }
            "QUIT" => {
                record(&mut |c| c.quit = true);
                let _ = out.write_all(b"221 2.0.0 Bye\r\n");
                break;
            }
            _ => "250 2.0.0 Ok\r\n".into(),
        };
        std::thread::sleep(config.delay);
        if out.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
    record(&mut |c| c.closed = true);
}

/// Whether more input is already waiting shortly after a command was read, before its reply.
fn sent_ahead(reader: &mut BufReader<TcpStream>) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    std::thread::sleep(Duration::from_millis(30));
    let stream = reader.get_ref();
    let _ = stream.set_nonblocking(true);
    let mut byte = [0u8; 1];
    let ahead = matches!(stream.peek(&mut byte), Ok(n) if n > 0);
    let _ = stream.set_nonblocking(false);
    ahead
}

/// Reads message data up to CRLF "." CRLF; returns it without the final "." line.
fn read_data(reader: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if reader.read(&mut byte).ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
        if raw == b".\r\n" {
            return Some(Vec::new());
        }
        if raw.ends_with(b"\r\n.\r\n") {
            raw.truncate(raw.len() - 3);
            return Some(raw);
        }
    }
}

fn multiline(code: u16, lines: &[String]) -> String {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    out
}

/// A next hop that accepts connections and never says a word (a tarpit). Connections are held
/// until the process ends.
pub fn tarpit() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}
