//! A stable fuzzing harness (no nightly needed): mutates seed inputs and feeds them to the
//! parsers that read untrusted bytes, for a fixed time, and saves any input that panics.
//!
//!     cargo run --release -p mta-host --example fuzz -- <target> <seconds> [seed files...]
//!     bench/fuzz.sh            # every target, 30 s each
//!
//! Targets: `agents-file` (the agents file parser), `replay` and `pickup` (directory formats),
//! `host-config` (mta.toml), `message` (the message parser and its header edits: every byte
//! survives a parse), `session` (the sans-IO SMTP session, in process: one DATA in, at most one
//! message out, its body exactly the one sent), `smtp` (raw bytes to a running mta's SMTP port:
//! `MTA_FUZZ_PORT`, the server must stay up).

use mta_host::directories::{pickup::Pickup, replay::Replay, Format};
use mta_host::smtp::session::{Effect, Raised, Session, SessionConfig, SpoolChunk, Step};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// xorshift64*: enough randomness for mutation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\r\n.\r\n",
    b"\n.\n",
    b"<",
    b">",
    b"\"",
    b"&amp;",
    b"\x00",
    b"\xff",
    b":",
    b";",
    b"=",
    b"@",
    b"%",
    b"!",
    b"<agent ",
    b"/>",
    b"</agentList>",
    b"X-Sender: <>",
    b"X-Receiver: <a@b>",
    b"[[send_connectors]]",
    b"\xe2\x80\xae",
    b"MAIL FROM:<>",
    b"BDAT 1",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, piece.iter().copied());
            }
            3 if !out.is_empty() => {
                let from = rng.below(out.len());
                let len = rng.below(64).min(out.len() - from);
                let chunk = out[from..from + len].to_vec();
                out.splice(at..at, chunk);
            }
            _ => out.insert(at, rng.next() as u8),
        }
    }
    out.truncate(1 << 16);
    out
}

fn run_one(target: &str, input: &[u8], scratch: &Path) {
    match target {
        "agents-file" => {
            let text = String::from_utf8_lossy(input).into_owned();
            let _ = mta_host::agents::file::parse(Path::new("fuzz/agents.config"), text);
        }
        "replay" => {
            let _ = Replay {
                postmaster: "postmaster@fuzz.test".into(),
            }
            .read(mta_host::message::Message::parse(
                &mta_host::message::to_crlf(input),
            ));
        }
        "pickup" => {
            let _ = Pickup {
                hostname: "fuzz.test".into(),
            }
            .read(mta_host::message::Message::parse(
                &mta_host::message::to_crlf(input),
            ));
        }
        "host-config" => {
            let path = scratch.join("mta.toml");
            std::fs::write(&path, input).expect("scratch file");
            let _ = mta_host::config::HostConfig::load(Some(&path));
        }
        "message" => {
            let m = mta_host::message::Message::parse(input);
            assert_eq!(
                m.to_vec().expect("in memory"),
                input,
                "every byte survives a parse"
            );
            let mut m = m;
            let _ = m.header("Subject");
            let _ = m.set_header("X-Fuzz", "1");
            let bytes = m.to_vec().expect("in memory");
            assert_eq!(bytes.len(), m.len(), "len() agrees with to_bytes()");
            let again = mta_host::message::Message::parse(&bytes);
            assert_eq!(
                again.header("X-Fuzz").as_deref(),
                Some("1"),
                "an added field survives a round trip"
            );
        }
        "session" => session(input),
        "smtp" => {
            let port: u16 = std::env::var("MTA_FUZZ_PORT")
                .ok()
                .and_then(|p| p.parse().ok())
                .expect("MTA_FUZZ_PORT");
            let mut stream =
                std::net::TcpStream::connect(("127.0.0.1", port)).expect("the server is up");
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .ok();
            let _ = stream.write_all(input);
            let mut sink = [0u8; 4096];
            let _ = stream.read(&mut sink);
        }
        other => panic!("unknown target {other}"),
    }
}

/// Takes every recipient.
struct Anyone;

impl mta_host::smtp::receive::RecipientPolicy for Anyone {
    fn check(&self, _: &str, _: bool) -> Result<(), mta_agent_sdk::SmtpResponse> {
        Ok(())
    }
}

/// Runs a session over `input` (in reads of a size the input picks), answering every effect
/// as an accepting Transport would; the messages it took and how many DATA it answered 354.
fn drive(
    input: &[u8],
    chunk: usize,
    spool: Option<usize>,
) -> (Vec<mta_host::message::MailItem>, usize) {
    let config = SessionConfig {
        service: mta_host::service::Service::Transport,
        hostname: "fuzz.test".into(),
        lmtp: false,
        max_message_size: 1 << 20,
        max_recipients: 100,
        max_errors: 1000,
        permissions: mta_host::smtp::receive::Permissions {
            anonymous: true,
            users: true,
            servers: true,
        },
        trusted: Vec::new(),
        xclient_hosts: vec!["127.0.0.1".parse().expect("an address")],
        starttls: true,
        auth: true,
        auth_requires_tls: false,
        postmaster: "postmaster@fuzz.test".into(),
        spool,
    };
    let mut spooled = Vec::new();
    let peer = "127.0.0.1:1".parse().expect("an address");
    let events = mta_agent_sdk::Event::ALL.into_iter().collect();
    let mut session = Session::new(Arc::new(config), Arc::new(Anyone), events, peer, peer);
    let (mut messages, mut output, mut fed) = (Vec::new(), Vec::new(), 0);
    loop {
        match session.step() {
            Step::Read => {
                output.extend(session.take_output());
                if fed >= input.len() {
                    session.input_closed();
                    continue;
                }
                let end = (fed + chunk).min(input.len());
                session.receive(&input[fed..end]);
                fed = end;
            }
            Step::Close(_) => break,
            Step::Effect(effect) => match effect {
                Effect::Raise(r) => session.agents_done(Raised {
                    item: r.item,
                    ..Raised::default()
                }),
                Effect::StartTls => session.tls_done(false),
                Effect::Authenticate { .. } => session.auth_done(mta_host::auth::Outcome::Valid),
                Effect::Mail(_) => session.mail_done(Ok("F".into())),
                Effect::Rcpt(_) => session.rcpt_done(Ok(())),
                Effect::Data => session.data_done(Ok(())),
                Effect::Message(item) => {
                    messages.push(*item);
                    session.message_done(vec![mta_host::smtp::reply(250, "2.0.0", "OK")]);
                }
                Effect::Reset => session.reset_done(),
                // The spool, in memory: the session cannot tell.
                Effect::Spool(SpoolChunk::Write(bytes)) => {
                    spooled.extend_from_slice(&bytes);
                    session.spool_done(Ok(None));
                }
                Effect::Spool(SpoolChunk::Finish(bytes)) => {
                    spooled.extend_from_slice(&bytes);
                    let body = std::mem::take(&mut spooled).into();
                    session.spool_done(Ok(Some(body)));
                }
            },
        }
    }
    output.extend(session.take_output());
    let go_aheads = String::from_utf8_lossy(&output).matches("354 ").count();
    (messages, go_aheads)
}

/// The session target. The first byte picks the read size; an odd second byte makes the rest
/// a body sent in one proper transaction (it must arrive exactly), else the rest is raw input
/// (no more messages than DATA commands answered 354).
fn session(input: &[u8]) {
    let chunk = 1 + usize::from(input.first().copied().unwrap_or(0));
    let structured = input.get(1).is_some_and(|b| b % 2 == 1);
    let rest = input.get(2..).unwrap_or(&[]);
    if structured {
        let split = rest.len() / 2;
        let mut body = rest[..split].to_vec();
        body.extend_from_slice(b"\r\n");
        let mut wire =
            b"EHLO f\r\nMAIL FROM:<a@f.test>\r\nRCPT TO:<b@f.test>\r\nDATA\r\nSubject: s\r\n\r\n"
                .to_vec();
        mta_host::smtp::data::dot_stuff(&body, &mut wire);
        wire.extend_from_slice(&rest[split..]);
        // Kept whole, and spooled past a threshold the input picks.
        for spool in [None, Some(1 + chunk % 97)] {
            let (messages, _) = drive(&wire, chunk, spool);
            assert!(!messages.is_empty(), "the message arrives");
            assert_eq!(
                messages[0].message.body().in_memory(),
                Some(body.as_slice()),
                "byte for byte"
            );
        }
    }
    let (messages, go_aheads) = drive(rest, chunk, Some(1 + chunk % 61));
    assert!(messages.len() <= go_aheads, "at most one message per DATA");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let target = args
        .first()
        .cloned()
        .unwrap_or_else(|| "agents-file".into());
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut seeds: Vec<Vec<u8>> = args
        .iter()
        .skip(2)
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    if seeds.is_empty() {
        seeds.push(b"seed".to_vec());
    }
    let scratch = std::env::temp_dir().join(format!("mta-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let crashes = PathBuf::from("bench/fuzz-crashes");
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut found) = (0u64, 0u32);
    while Instant::now() < deadline {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        runs += 1;
        if catch_unwind(AssertUnwindSafe(|| run_one(&target, &input, &scratch))).is_err() {
            found += 1;
            std::fs::create_dir_all(&crashes).ok();
            let path = crashes.join(format!("{target}-{runs}"));
            std::fs::write(&path, &input).ok();
            eprintln!(
                "{target}: input {runs} panicked; saved as {}",
                path.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{target}: {runs} inputs in {seconds} s, {found} panics");
    if found > 0 {
        std::process::exit(1);
    }
}
