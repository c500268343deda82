//! `mta track`: the story of each message from the tracking log (Exchange's
//! Get-MessageTrackingLog; Postfix's `grep QUEUEID /var/log/maillog`), in order, across the
//! Front End, Transport and Mailbox Transport services.

use crate::config::HostConfig;
use crate::tracking::{read_records, stories, EventId, Filter, Record};
use clap::Args;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Args)]
pub struct TrackArgs {
    /// Messages with this Message-ID (angle brackets optional).
    #[arg(long)]
    message_id: Option<String>,
    /// Messages with this Transport queue id.
    #[arg(long)]
    queue_id: Option<String>,
    /// Messages from this envelope sender.
    #[arg(long)]
    sender: Option<String>,
    /// Messages to this recipient.
    #[arg(long)]
    recipient: Option<String>,
    /// Only events this recent: `90s`, `30m`, `2h`, `7d`, or an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only events of this kind (RECEIVE, REJECT, SEND, DELIVER, DEFER, FAIL, DSN, ...).
    #[arg(long)]
    event: Option<String>,
    /// Print the records as JSON lines instead.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &HostConfig, args: TrackArgs) -> anyhow::Result<ExitCode> {
    let since_ms = args.since.as_deref().map(parse_since).transpose()?;
    let event = args
        .event
        .as_deref()
        .map(|e| EventId::parse(e).ok_or_else(|| anyhow::anyhow!("unknown event {e:?}: expected one of RECEIVE, REJECT, SUBMIT, AGENTINFO, RESOLVE, EXPAND, REDIRECT, TRANSFER, DEFER, DELIVER, SEND, FAIL, DSN, POISONMESSAGE, DROP, BADMAIL")))
        .transpose()?;
    let filter = Filter {
        message_id: args.message_id,
        queue_id: args.queue_id,
        sender: args.sender,
        recipient: args.recipient,
        since_ms,
        event,
    };
    let dir = config.tracking_dir();
    let records = match read_records(&dir, since_ms) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("No tracking log under {} yet.", dir.display());
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", dir.display())),
    };
    let found = stories(records, &filter);
    if found.is_empty() {
        eprintln!("No message matches.");
        return Ok(ExitCode::from(1));
    }
    for (n, story) in found.iter().enumerate() {
        if args.json {
            for r in &story.records {
                println!("{}", serde_json::to_string(r)?);
            }
            continue;
        }
        if n > 0 {
            println!();
        }
        let first = &story.records[0];
        println!(
            "Message {}  from <{}>",
            story.message_id.as_deref().unwrap_or("(no Message-ID)"),
            first.sender
        );
        for r in &story.records {
            println!("  {}", line(r));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One record as a line: time, service, event, then what applies.
fn line(r: &Record) -> String {
    let mut out = format!(
        "{}  {:<9} {:<13}",
        r.time,
        r.service,
        r.event.map_or("?", EventId::as_str)
    );
    let mut field = |name: &str, value: &str| {
        if value.contains(' ') || value.is_empty() {
            out.push_str(&format!(" {name}={value:?}"));
        } else {
            out.push_str(&format!(" {name}={value}"));
        }
    };
    if !r.queue_id.is_empty() {
        field("id", &r.queue_id);
    }
    if let Some(v) = &r.source {
        field("source", v);
    }
    if let Some(v) = &r.client {
        field("client", v);
    }
    if let Some(v) = &r.helo {
        field("helo", v);
    }
    if let Some(v) = &r.auth_user {
        field("user", v);
    }
    if r.tls == Some(true) {
        field("tls", "yes");
    }
    if !r.recipients.is_empty() {
        field("to", &r.recipients.join(","));
    }
    if let Some(v) = r.size {
        field("size", &v.to_string());
    }
    if let Some(v) = &r.connector {
        field("via", v);
    }
    if let Some(v) = &r.next_hop {
        field("hop", v);
    }
    if let Some(v) = &r.agent {
        field("agent", v);
    }
    if let Some(v) = &r.related {
        field("related", v);
    }
    if let Some(v) = &r.detail {
        field("detail", v);
    }
    if let Some(v) = &r.reply {
        field("reply", v);
    }
    // Values came from clients and remote servers: never let them end the line.
    out.replace(['\r', '\n'], " ")
}

/// `2h`-style ages or an RFC 3339 time, as ms since the epoch.
fn parse_since(text: &str) -> anyhow::Result<u64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86_400),
        _ => None,
    };
    if let Some(last) = text.chars().last().filter(|c| unit(*c).is_some()) {
        if let Ok(n) = text[..text.len() - 1].parse::<u64>() {
            let age = Duration::from_secs(n * unit(last).unwrap_or(1));
            return Ok(now.saturating_sub(age).as_millis() as u64);
        }
    }
    crate::message::date::ms_from_rfc3339(text).ok_or_else(|| {
        anyhow::anyhow!("--since {text:?}: expected an age (90s, 30m, 2h, 7d) or an RFC 3339 time (2026-12-02T10:00:00Z)")
    })
}
