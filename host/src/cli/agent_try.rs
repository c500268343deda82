//! `mta agent try`: one agent, one message, no server.
//!
//! The library is loaded as the host loads it (from a private shadow copy, with the SDK check),
//! its factory built from `--parameter`s, and one instance is given the events its class sees
//! for one message, in the host's order. The host's part is played by the SDK's in-memory
//! [`TestHost`], the same one the agent's own `cargo test` uses, so what `try` shows is what
//! the agent's tests see; nothing is queued, delivered or written.

use crate::agents::Libraries;
use abi_stable::sabi_trait::TD_Opaque;
use anyhow::{bail, Context};
use mta_agent_sdk::abi::{AgentInstanceBox, EventHost_TO};
use mta_agent_sdk::testing::{TestHost, TestMessage};
use mta_agent_sdk::{Action, AgentClass, Event, Recipient};
use std::path::Path;
use std::process::ExitCode;

/// What `mta agent try` was asked.
#[derive(Debug)]
pub struct TryArgs<'a> {
    pub library: &'a Path,
    pub factory: &'a str,
    pub eml: &'a Path,
    pub events: &'a [Event],
    pub parameters: &'a [(String, String)],
    pub from: Option<&'a str>,
    pub to: &'a [String],
}

/// Parses `--event` (`OnMailCommand` or `on_mail_command`).
pub fn parse_event(value: &str) -> Result<Event, String> {
    Event::from_name(value).ok_or_else(|| format!("unknown event {value:?} (OnConnect, OnMailCommand, OnEndOfData, OnSubmittedMessage, ...)"))
}

/// The client the SMTP events come from.
const REMOTE: &str = "192.0.2.1:49152";
/// The EHLO domain of that client.
const HELO: &str = "client.example";

pub fn run(args: TryArgs<'_>) -> anyhow::Result<ExitCode> {
    let raw = std::fs::read(args.eml).with_context(|| format!("reading {}", args.eml.display()))?;
    let library_path = std::path::absolute(args.library).context("resolving the library's path")?;
    let library = Libraries::for_command().load(&library_path)?;
    let Some(info) = library.factories.iter().find(|f| f.name == args.factory) else {
        let names: Vec<_> = library
            .factories
            .iter()
            .map(|f| format!("{:?} ({})", f.name, f.class))
            .collect();
        bail!(
            "library {} has no factory named {:?}; it exports: {}",
            library_path.display(),
            args.factory,
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        );
    };
    for event in args.events {
        if event.class() != info.class {
            bail!(
                "{event} is not an event of a {} (factory {:?}); its events are {}",
                info.class,
                args.factory,
                info.class
                    .events()
                    .map(|e| e.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let factory = info
        .instantiate(args.parameters)
        .map_err(|m| anyhow::anyhow!("factory {:?} refuses these parameters: {m}", args.factory))?;
    let instance = factory.create_agent().into_result().map_err(|m| {
        anyhow::anyhow!("factory {:?} could not create an agent: {m}", args.factory)
    })?;

    let mut message = TestMessage::parse(&raw);
    let from = args
        .from
        .map(str::to_string)
        .or_else(|| {
            message
                .header("From")
                .and_then(|v| addresses(v).into_iter().next())
        })
        .unwrap_or_default();
    let to: Vec<String> = if args.to.is_empty() {
        message.header("To").map(addresses).unwrap_or_default()
    } else {
        args.to.to_vec()
    };
    if to.is_empty() {
        bail!("no recipient: the message has no To field; give --to ADDRESS");
    }
    let to_refs: Vec<&str> = to.iter().map(String::as_str).collect();
    message = message.with_envelope(&from, &to_refs);
    let before = message.clone();

    println!(
        "Agent {} ({}) from {}",
        args.factory,
        info.class,
        library_path.display()
    );
    println!(
        "  handles: {}",
        info.events
            .iter()
            .map(|e| e.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Message {}: from <{from}> to {}",
        args.eml.display(),
        to.iter()
            .map(|t| format!("<{t}>"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut trial = Trial {
        instance,
        handles: info.events,
        only: args.events,
        message,
        faulted: false,
    };
    match info.class {
        AgentClass::SmtpReceive => trial.smtp_session(),
        AgentClass::Routing => trial.routing(),
        AgentClass::Delivery => trial.delivery(),
    }

    let envelope = |m: &TestMessage| {
        let to: Vec<String> = m
            .recipients
            .iter()
            .map(|r| format!("<{}>", r.address))
            .collect();
        format!(
            "from <{}> to {}",
            m.from,
            if to.is_empty() {
                "nobody".into()
            } else {
                to.join(", ")
            }
        )
    };
    if envelope(&before) != envelope(&trial.message) {
        println!("Envelope now: {}", envelope(&trial.message));
    }
    let old = text(&before.to_mime());
    let new = text(&trial.message.to_mime());
    if old == new {
        println!("Message: unchanged");
    } else {
        println!("Message:");
        let diff = similar::TextDiff::from_lines(&old, &new);
        print!(
            "{}",
            diff.unified_diff()
                .context_radius(2)
                .header("before", "after")
        );
    }
    Ok(if trial.faulted {
        eprintln!("error: the agent faulted (see the fault above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The message as text for the diff, line ends as `\n`.
fn text(mime: &[u8]) -> String {
    String::from_utf8_lossy(mime).replace("\r\n", "\n")
}

/// The addresses of an address-list field: `A <a@x>, b@y` -> `a@x`, `b@y`.
fn addresses(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            let address = match (part.rfind('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => &part[open + 1..close],
                _ => part,
            };
            Some(address.trim().to_string()).filter(|a| a.contains('@'))
        })
        .collect()
}

/// One agent instance and the message it works on.
struct Trial<'a> {
    instance: AgentInstanceBox,
    handles: mta_agent_sdk::EventSet,
    /// `--event`: raise these only (all when empty).
    only: &'a [Event],
    message: TestMessage,
    faulted: bool,
}

/// What an event did, as the session goes on from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Not raised (`--event`) or not handled by the agent.
    Skipped,
    Continue,
    /// The agent rejected the command.
    Rejected,
    /// The agent asked to close the connection, or to stop the message (discard, delete,
    /// defer), or faulted.
    Stopped,
}

impl Trial<'_> {
    /// The SMTP receive events of one session that sends the message, in the host's order.
    /// A reject ends the transaction as the host would (a refused RCPT only drops that
    /// recipient); OnDisconnect is raised in every case.
    fn smtp_session(&mut self) {
        let mut host = TestHost::smtp(REMOTE);
        let mut ended = false;
        for (event, args) in [
            (Event::OnConnect, &[][..]),
            (Event::OnEhloCommand, &[("domain", HELO)][..]),
        ] {
            if self.raise(event, &mut host, args, false) >= Outcome::Rejected {
                println!("  (the session ends here)");
                ended = true;
                break;
            }
        }
        host.session.helo_domain = HELO.to_string();
        if !ended {
            let from = self.message.from.clone();
            if self.raise(Event::OnMailCommand, &mut host, &[("from", &from)], false)
                >= Outcome::Rejected
            {
                println!("  (the transaction ends here: no RCPT, no DATA)");
                ended = true;
            }
        }
        if !ended {
            let recipients = std::mem::take(&mut self.message.recipients);
            for recipient in recipients {
                host.args.clear();
                let outcome = self.raise(
                    Event::OnRcptCommand,
                    &mut host,
                    &[("recipient", &recipient.address)],
                    false,
                );
                match outcome {
                    Outcome::Rejected => continue,
                    Outcome::Stopped => {
                        ended = true;
                        break;
                    }
                    _ => {}
                }
                // A SetRecipient replaces the address the command carried.
                let address = host
                    .args
                    .get("recipient")
                    .cloned()
                    .unwrap_or(recipient.address.clone());
                self.message.recipients.push(Recipient {
                    address,
                    ..recipient
                });
            }
            if !ended && self.message.recipients.is_empty() {
                println!("  (no recipient accepted: the session sends no DATA)");
                ended = true;
            }
        }
        for event in [
            Event::OnDataCommand,
            Event::OnEndOfHeaders,
            Event::OnEndOfData,
        ] {
            if ended {
                break;
            }
            let with_message = event != Event::OnDataCommand;
            if self.raise(event, &mut host, &[], with_message) >= Outcome::Rejected {
                println!("  (the message is not accepted)");
                ended = true;
            }
        }
        self.raise(Event::OnDisconnect, &mut host, &[("reason", "quit")], false);
    }

    /// The four categorizer events, in order; a delete, defer or fault ends the mail item.
    fn routing(&mut self) {
        let mut host = TestHost::default();
        for event in [
            Event::OnSubmittedMessage,
            Event::OnResolvedMessage,
            Event::OnRoutedMessage,
            Event::OnCategorizedMessage,
        ] {
            if self.raise(event, &mut host, &[], true) == Outcome::Stopped {
                println!("  (the mail item goes no further)");
                break;
            }
        }
    }

    /// One delivery connection that delivers this one mail item.
    fn delivery(&mut self) {
        let mut host = TestHost::default();
        let domain = self
            .message
            .recipients
            .first()
            .and_then(|r| r.address.rsplit_once('@'))
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        let args = [("next_hop_domain", domain.as_str())];
        self.raise(Event::OnOpenConnection, &mut host, &args, false);
        self.raise(Event::OnDeliverMailItem, &mut host, &args, true);
        self.raise(Event::OnCloseConnection, &mut host, &args, false);
    }

    /// Raises one event (unless `--event` leaves it out or the agent does not handle it) and
    /// prints it with what the agent did.
    fn raise(
        &mut self,
        event: Event,
        host: &mut TestHost,
        args: &[(&str, &str)],
        with_message: bool,
    ) -> Outcome {
        if !self.handles.contains(event) || (!self.only.is_empty() && !self.only.contains(&event)) {
            return Outcome::Skipped;
        }
        for (n, v) in args {
            host.args.insert(n.to_string(), v.to_string());
        }
        let shown: Vec<String> = args
            .iter()
            .map(|(n, v)| match *n {
                "from" | "recipient" => format!("{n}=<{v}>"),
                _ => format!("{n}={v}"),
            })
            .collect();
        println!(
            "{event}{}",
            if shown.is_empty() {
                String::new()
            } else {
                format!(" {}", shown.join(" "))
            }
        );
        let before = self.message.clone();
        host.message = with_message.then(|| self.message.clone());
        host.actions.clear();
        host.event = Some(event);
        let result = self
            .instance
            .handle(event, EventHost_TO::from_ptr(&mut *host, TD_Opaque))
            .into_result();
        host.event = None;
        if let Some(message) = host.message.take() {
            self.message = message;
        }
        let mut lines: Vec<String> = host.actions.iter().map(describe).collect();
        lines.extend(changes(&before, &self.message));
        if let Err(fault) = &result {
            lines.push(format!(
                "fault: {fault} (the host would fail what the agent was doing, with a temporary error)"
            ));
            self.faulted = true;
        }
        if lines.is_empty() {
            lines.push("no action".into());
        }
        for line in lines {
            println!("  {line}");
        }
        if result.is_err() {
            return Outcome::Stopped;
        }
        let stops = host.actions.iter().any(|a| {
            matches!(
                a,
                Action::Disconnect | Action::Discard | Action::Delete | Action::Defer { .. }
            )
        });
        if stops {
            Outcome::Stopped
        } else if host.rejection().is_some() {
            Outcome::Rejected
        } else {
            Outcome::Continue
        }
    }
}

/// One action, as the operator reads it.
fn describe(action: &Action) -> String {
    let reply = |r: &mta_agent_sdk::SmtpResponse| {
        format!(
            "{} {} {}",
            r.code(),
            r.enhanced_code(),
            r.text().replace('\n', " / ")
        )
    };
    match action {
        Action::Reject(r) => format!("reject: {}", reply(r)),
        Action::Disconnect => "disconnect".into(),
        Action::Discard => "discard the message".into(),
        Action::Quarantine(reason) => format!("quarantine: {reason}"),
        Action::SetBanner(text) => format!("banner set: {text}"),
        Action::DisableStartTls => "STARTTLS not offered".into(),
        Action::Defer { delay, response } => format!(
            "defer for {}s{}",
            delay.as_secs(),
            response
                .as_ref()
                .map(|r| format!(": {}", reply(r)))
                .unwrap_or_default()
        ),
        Action::Delete => "delete the mail item".into(),
        Action::Fork(recipients) => format!(
            "fork: this item keeps {}; a copy takes the other recipients",
            recipients.join(", ")
        ),
        Action::SetRoutingOverride {
            recipient, domain, ..
        } => {
            format!("routing override: {recipient} via {domain}")
        }
        Action::RegisterConnection {
            remote_host,
            response,
        } => {
            format!("register connection to {remote_host}: {}", reply(response))
        }
        Action::UnregisterConnection => "unregister connection".into(),
        Action::AckMailItem { status, response } => {
            format!("ack mail item {status:?}: {}", reply(response))
        }
        Action::AckRecipient {
            recipient,
            status,
            response,
        } => {
            format!("ack {recipient} {status:?}: {}", reply(response))
        }
        Action::FailQueue(r) => format!("fail queue: {}", reply(r)),
        Action::DeferQueue { delay, response } => {
            format!("defer queue for {}s: {}", delay.as_secs(), reply(response))
        }
        Action::SubmitMessage {
            from,
            recipients,
            mime,
        } => format!(
            "submit a new message from <{from}> to {} ({} bytes)",
            recipients.join(", "),
            mime.len()
        ),
        Action::SetRecipient(address) => format!("recipient changed to <{address}>"),
    }
}

/// The edits an event made to the mail item: envelope and header fields, and whether the body
/// changed (the diff at the end shows how).
fn changes(before: &TestMessage, after: &TestMessage) -> Vec<String> {
    let mut lines = Vec::new();
    if before.from != after.from {
        lines.push(format!(
            "sender changed: <{}> -> <{}>",
            before.from, after.from
        ));
    }
    let had = |m: &TestMessage, a: &str| {
        m.recipients
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(a))
    };
    for r in &after.recipients {
        if !had(before, &r.address) {
            lines.push(format!("recipient added: <{}>", r.address));
        }
    }
    for r in &before.recipients {
        if !had(after, &r.address) {
            lines.push(format!("recipient removed: <{}>", r.address));
        }
    }
    let mut old = before.headers.clone();
    for (name, value) in &after.headers {
        match old
            .iter()
            .position(|(n, v)| n.eq_ignore_ascii_case(name) && v == value)
        {
            Some(i) => {
                old.remove(i);
            }
            None => lines.push(format!("header added: {name}: {value}")),
        }
    }
    lines.extend(old.iter().map(|(n, v)| format!("header removed: {n}: {v}")));
    if before.body != after.body {
        lines.push("body changed".into());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_says_which_recipients_the_item_keeps() {
        assert_eq!(
            describe(&Action::Fork(vec!["dave@example.test".into()])),
            "fork: this item keeps dave@example.test; a copy takes the other recipients"
        );
    }

    #[test]
    fn address_lists_give_their_addresses() {
        assert_eq!(
            addresses("Ann <ann@example.test>, bob@example.test, undisclosed-recipients:;"),
            ["ann@example.test", "bob@example.test"]
        );
    }

    #[test]
    fn header_edits_are_named() {
        let before = TestMessage::parse(b"Subject: a\r\nX-Old: 1\r\n\r\nbody\r\n");
        let mut after = before.clone();
        after.headers.retain(|(n, _)| n != "X-Old");
        after.headers.push(("X-New".into(), "2".into()));
        assert_eq!(
            changes(&before, &after),
            ["header added: X-New: 2", "header removed: X-Old: 1"]
        );
    }
}
