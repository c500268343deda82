//! `mta trace QUEUE-ID`: what each agent did to a message, from its pipeline snapshots
//! (`<messageSnapshot enabled="true"/>`). Exchange leaves its admins to diff the snapshot files
//! by hand; this prints, in order, each agent that ran (service, event, agent) and what it
//! changed: the envelope (sender, recipients added, removed or re-parametered) and a unified
//! diff of the header block and body, or "no change".
//!
//! Each snapshot is compared with the one before it, so a change is shown once, under whoever
//! made it: an agent, or the host between two events (`host` snapshots).

use crate::agents::snapshot::{self, Content, Snapshot};
use crate::config::HostConfig;
use clap::Args;
use serde_json::json;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// The Transport queue id (as `mta track` and the Received fields show it).
    queue_id: String,
    /// Print one JSON object per snapshot instead, with its changes.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &HostConfig, args: TraceArgs) -> anyhow::Result<ExitCode> {
    if !snapshot::valid_queue_id(&args.queue_id) {
        anyhow::bail!(
            "{:?} is not a queue id (letters, digits, '.', '-' and '_')",
            args.queue_id
        );
    }
    let dir = config.snapshots_dir();
    let items = match snapshot::read(&dir, &args.queue_id) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => anyhow::bail!("reading {}: {e}", dir.display()),
    };
    if items.iter().all(|(_, s)| s.is_empty()) {
        eprintln!(
            "No snapshots of {} under {}: pipeline tracing records messages received while \
             <messageSnapshot enabled=\"true\"/> is set in an agents file (and, if [snapshots] \
             senders is set, from those senders).",
            args.queue_id,
            dir.display()
        );
        return Ok(ExitCode::from(1));
    }
    for (n, (id, snapshots)) in items.iter().enumerate() {
        if args.json {
            for (i, s) in snapshots.iter().enumerate() {
                let before = i.checked_sub(1).map(|p| &snapshots[p]);
                println!("{}", serde_json::to_string(&to_json(id, before, s))?);
            }
            continue;
        }
        if n > 0 {
            println!();
        }
        print!("{}", render(id, snapshots));
    }
    Ok(ExitCode::SUCCESS)
}

/// The text report of one item's snapshots.
pub fn render(id: &str, snapshots: &[Snapshot]) -> String {
    let mut out = format!("Queue id {id}: {} snapshots\n", snapshots.len());
    for (i, s) in snapshots.iter().enumerate() {
        out.push('\n');
        let who = match s.kind.as_str() {
            "original" => "original (as received)".to_string(),
            "host" => "host (changes between events, before the agents)".to_string(),
            _ => format!("agent {:?}", s.agent),
        };
        out.push_str(&format!(
            "{:03}  {}  {}  {who}\n",
            s.number, s.service, s.event
        ));
        for action in &s.actions {
            out.push_str(&format!("     action: {action}\n"));
        }
        if let Some(fault) = &s.fault {
            out.push_str(&format!("     fault: {fault}\n"));
        }
        let Some(before) = i.checked_sub(1).map(|p| &snapshots[p]) else {
            out.push_str(&format!("     from <{}>\n", s.sender));
            for r in &s.recipients {
                out.push_str(&format!("     to {r}\n"));
            }
            out.push_str(&format!("     recorded: {}\n", recorded(&s.content)));
            continue;
        };
        let changes = Changes::between(before, s);
        if changes.is_empty() {
            out.push_str("     no change\n");
            continue;
        }
        for line in changes.envelope_lines() {
            out.push_str(&format!("     {line}\n"));
        }
        for note in &changes.notes {
            out.push_str(&format!("     {note}\n"));
        }
        if let Some(diff) = &changes.diff {
            for line in diff.lines() {
                out.push_str(&format!("     {line}\n"));
            }
        }
    }
    out
}

fn recorded(content: &Content) -> String {
    match content {
        Content::Envelope => "envelope only (no message yet)".into(),
        Content::Headers => "envelope and header block (the body has not arrived)".into(),
        Content::Message => "envelope and message".into(),
        Content::Omitted(size) => {
            format!(
                "envelope only: the message ({size} bytes) is over [snapshots] max_message_size"
            )
        }
    }
}

/// What changed from one snapshot to the next.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The sender, before and after.
    pub sender: Option<(String, String)>,
    /// Recipients added (`<address>` and parameters).
    pub added: Vec<String>,
    /// Recipients removed.
    pub removed: Vec<String>,
    /// Recipients whose parameters changed (a routing override): before and after.
    pub changed: Vec<(String, String)>,
    /// What could not be compared, or what arrived.
    pub notes: Vec<String>,
    /// A unified diff of the message (or of the header blocks, when only those compare).
    pub diff: Option<String>,
}

impl Changes {
    /// Compares `before` with `after`.
    pub fn between(before: &Snapshot, after: &Snapshot) -> Self {
        let mut changes = Changes::default();
        if !before.sender.eq_ignore_ascii_case(&after.sender) {
            changes.sender = Some((before.sender.clone(), after.sender.clone()));
        }
        let address = |r: &str| {
            r.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        for r in &after.recipients {
            match before.recipients.iter().find(|b| address(b) == address(r)) {
                None => changes.added.push(r.clone()),
                Some(b) if b != r => changes.changed.push((b.clone(), r.clone())),
                Some(_) => {}
            }
        }
        for b in &before.recipients {
            if !after.recipients.iter().any(|r| address(r) == address(b)) {
                changes.removed.push(b.clone());
            }
        }
        let (old, new) = match (&before.content, &after.content) {
            (Content::Message, Content::Message) | (Content::Headers, Content::Headers) => {
                (text(&before.message), text(&after.message))
            }
            (Content::Headers, Content::Message) | (Content::Message, Content::Headers) => {
                if after.content == Content::Message {
                    changes
                        .notes
                        .push("the body arrived (header blocks compared)".into());
                }
                (head(&before.message), head(&after.message))
            }
            (Content::Envelope, Content::Headers | Content::Message) => {
                changes.notes.push(format!(
                    "the {} arrived",
                    if after.content == Content::Headers {
                        "header block"
                    } else {
                        "message"
                    }
                ));
                (String::new(), text(&after.message))
            }
            (_, Content::Omitted(size)) | (Content::Omitted(size), _) => {
                if before.content != after.content {
                    changes.notes.push(format!(
                        "message not compared: {size} bytes is over [snapshots] max_message_size"
                    ));
                }
                (String::new(), String::new())
            }
            _ => (String::new(), String::new()),
        };
        if old != new {
            let diff = similar::TextDiff::from_lines(&old, &new);
            changes.diff = Some(
                diff.unified_diff()
                    .context_radius(2)
                    .header(&before.file, &after.file)
                    .to_string(),
            );
        }
        changes
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self == &Changes::default()
    }

    /// The envelope changes, one line each.
    pub fn envelope_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((from, to)) = &self.sender {
            lines.push(format!("sender changed: <{from}> -> <{to}>"));
        }
        lines.extend(self.added.iter().map(|r| format!("recipient added: {r}")));
        lines.extend(
            self.removed
                .iter()
                .map(|r| format!("recipient removed: {r}")),
        );
        lines.extend(
            self.changed
                .iter()
                .map(|(b, a)| format!("recipient changed: {b} -> {a}")),
        );
        lines
    }
}

/// A recorded message as text for the diff: line ends as `\n`, bytes that are not UTF-8 shown
/// as replacement characters.
fn text(message: &[u8]) -> String {
    String::from_utf8_lossy(message).replace("\r\n", "\n")
}

/// The header block of a recorded message (all of it when it is one).
fn head(message: &[u8]) -> String {
    let text = text(message);
    match text.find("\n\n") {
        Some(at) => text[..at + 1].to_string(),
        None => text,
    }
}

fn to_json(id: &str, before: Option<&Snapshot>, s: &Snapshot) -> serde_json::Value {
    let changes = before.map(|b| Changes::between(b, s));
    json!({
        "queue_id": id,
        "number": s.number,
        "file": s.file,
        "service": s.service,
        "event": s.event,
        "agent": s.agent,
        "kind": s.kind,
        "time": s.time,
        "actions": s.actions,
        "fault": s.fault,
        "sender": s.sender,
        "recipients": s.recipients,
        "recorded": match &s.content {
            Content::Envelope => "envelope".to_string(),
            Content::Headers => "headers".to_string(),
            Content::Message => "message".to_string(),
            Content::Omitted(size) => format!("omitted {size} bytes"),
        },
        "changes": changes.map(|c| json!({
            "none": c.is_empty(),
            "sender": c.sender.map(|(from, to)| json!({"from": from, "to": to})),
            "recipients_added": c.added,
            "recipients_removed": c.removed,
            "recipients_changed": c.changed.iter().map(|(b, a)| json!({"from": b, "to": a})).collect::<Vec<_>>(),
            "notes": c.notes,
            "diff": c.diff,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(n: u32, agent: &str, recipients: &[&str], message: &str) -> Snapshot {
        Snapshot {
            file: format!("{n:03}-transport-OnEndOfData-{agent}.eml"),
            number: n,
            service: "transport".into(),
            event: "OnEndOfData".into(),
            agent: agent.into(),
            kind: if n == 0 { "original" } else { "agent" }.into(),
            time: String::new(),
            actions: Vec::new(),
            fault: None,
            sender: "a@b.test".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            content: Content::Message,
            message: message.as_bytes().to_vec(),
        }
    }

    #[test]
    fn an_added_header_shows_in_a_unified_diff() {
        let before = snap(
            0,
            "original",
            &["<c@d.test>"],
            "Subject: hi\r\n\r\nhello\r\n",
        );
        let after = snap(
            1,
            "Stamp",
            &["<c@d.test>"],
            "Subject: hi\r\nX-Stamp: yes\r\n\r\nhello\r\n",
        );
        let c = Changes::between(&before, &after);
        let diff = c.diff.clone().unwrap();
        assert!(diff.starts_with("--- 000-transport-OnEndOfData-original.eml\n+++ 001-transport-OnEndOfData-Stamp.eml\n"), "{diff}");
        assert!(
            diff.contains("\n+X-Stamp: yes\n") && diff.contains("\n Subject: hi\n"),
            "{diff}"
        );
        assert!(c.envelope_lines().is_empty());
        let report = render("Q1", &[before, after]);
        assert!(
            report.contains("001  transport  OnEndOfData  agent \"Stamp\"\n"),
            "{report}"
        );
    }

    #[test]
    fn envelope_changes_are_named_and_nothing_is_no_change() {
        let before = snap(1, "x", &["<c@d.test>", "<e@f.test>"], "S: 1\r\n\r\n");
        let after = snap(
            2,
            "y",
            &["<C@d.test> ROUTING=MOBILE", "<g@h.test>"],
            "S: 1\r\n\r\n",
        );
        let c = Changes::between(&before, &after);
        assert_eq!(
            c.envelope_lines(),
            [
                "recipient added: <g@h.test>",
                "recipient removed: <e@f.test>",
                "recipient changed: <c@d.test> -> <C@d.test> ROUTING=MOBILE",
            ]
        );
        assert!(c.diff.is_none());
        let mut moved = after.clone();
        moved.sender = "z@b.test".into();
        assert_eq!(
            Changes::between(&after, &moved).envelope_lines(),
            ["sender changed: <a@b.test> -> <z@b.test>"]
        );
        assert!(Changes::between(&after, &after).is_empty());
        assert!(render("Q1", &[before.clone(), before]).contains("     no change\n"));
    }

    #[test]
    fn a_body_arriving_compares_header_blocks_only() {
        let mut before = snap(1, "h", &[], "Subject: hi\r\n\r\n");
        before.content = Content::Headers;
        let after = snap(2, "d", &[], "Subject: hi\r\n\r\nlong body\r\n");
        let c = Changes::between(&before, &after);
        assert_eq!(c.notes, ["the body arrived (header blocks compared)"]);
        assert!(c.diff.is_none(), "{c:?}");
    }
}
