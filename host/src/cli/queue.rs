//! `mta queue list` and `mta queue show QUEUE`: what waits in the Transport service's queues
//! (Exchange's Get-Queue and Get-Message), read from disk without disturbing a running server.

use crate::config::HostConfig;
use crate::message::MailItem;
use crate::transport::journal;
use crate::transport::submission_queue::QueueDir;
use clap::Subcommand;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queue with the number of items and the age of the oldest.
    List,
    /// The items of one queue (`submission`, `deferred`, `delivery-...`, `unreachable`,
    /// `quarantine`, `poison`): id, age, attempts, sender, recipients, next hop.
    Show {
        /// The queue's name, as `mta queue list` prints it.
        queue: String,
    },
}

/// The items of a queue, by name.
fn items(config: &HostConfig, queue: &str) -> anyhow::Result<Vec<(MailItem, u32)>> {
    let root = config.data_dir.join("queue");
    if queue == "submission" {
        return Ok(journal::live_items(&root.join("journal"))?);
    }
    let dir = root.join(queue);
    if !dir.is_dir() {
        anyhow::bail!("no queue named {queue:?} under {}", root.display());
    }
    let q = QueueDir::open(&config.data_dir, queue)?;
    Ok(q.ids()?
        .into_iter()
        .filter_map(|id| q.load_meta(&id).ok())
        .collect())
}

fn age(item: &MailItem) -> String {
    if item.trace.received_ms == 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now
        .saturating_sub(Duration::from_millis(item.trace.received_ms))
        .as_secs();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

pub fn run(config: &HostConfig, command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::List => {
            let root = config.data_dir.join("queue");
            let mut names = vec!["submission".to_string()];
            if let Ok(entries) = std::fs::read_dir(&root) {
                let mut others: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "journal" && n != "tmp" && n != "outbox")
                    .collect();
                others.sort();
                names.extend(others);
            }
            println!("{:<40} {:>8} {:>10}", "QUEUE", "ITEMS", "OLDEST");
            for name in names {
                let list = items(config, &name).unwrap_or_default();
                let oldest = list
                    .iter()
                    .filter(|(i, _)| i.trace.received_ms > 0)
                    .min_by_key(|(i, _)| i.trace.received_ms)
                    .map(|(i, _)| age(i))
                    .unwrap_or_else(|| "-".into());
                println!("{:<40} {:>8} {:>10}", name, list.len(), oldest);
            }
            print_live(config);
        }
        QueueCommand::Show { queue } => {
            for (item, attempts) in items(config, &queue)? {
                let rcpts: Vec<&str> = item
                    .envelope
                    .recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect();
                println!(
                    "{}  age {}  attempts {}  from <{}>  to {}{}{}",
                    item.id,
                    age(&item),
                    attempts,
                    item.envelope.from,
                    rcpts.join(", "),
                    item.trace
                        .next_hop
                        .as_deref()
                        .map(|h| format!("  next hop {h}"))
                        .unwrap_or_default(),
                    item.quarantine
                        .as_deref()
                        .map(|q| format!("  quarantined: {q}"))
                        .unwrap_or_default(),
                );
                if let Some(reason) = &item.trace.reason {
                    println!("    reason: {reason}");
                }
                for r in &item.envelope.recipients {
                    if let Some(last) = &r.last_attempt {
                        println!(
                            "    {}: last attempt {} {} {}{}",
                            r.address,
                            last.code,
                            last.enhanced,
                            last.text.replace('\n', " / "),
                            last.remote_mta
                                .as_deref()
                                .map(|m| format!(" (from {m})"))
                                .unwrap_or_default()
                        );
                    }
                }
                if item.trace.next_attempt_ms > 0 {
                    let wait = item
                        .trace
                        .next_attempt_ms
                        .saturating_sub(crate::transport::delivery::now_ms());
                    println!("    next attempt in {}s", wait / 1000);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The running server's back pressure and delivery queues, from its status file.
fn print_live(config: &HostConfig) {
    let Some(live) = crate::transport::status::read(&config.run_dir().join("queues.json")) else {
        println!(
            "\nBack pressure: not running (no recent {})",
            config.run_dir().join("queues.json").display()
        );
        return;
    };
    let bp = &live.back_pressure;
    println!(
        "\nBack pressure: {}",
        if bp.refusing {
            "new mail refused (452 4.3.1)"
        } else {
            "normal, new mail accepted"
        }
    );
    for r in &bp.readings {
        let show = |n: u64| match r.unit.as_str() {
            "bytes" => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
            "percent" => format!("{n}%"),
            _ => n.to_string(),
        };
        println!(
            "  {:<14} {:>10}  high {:>10}  low {:>10}{}",
            r.resource,
            show(r.value),
            show(r.high),
            show(r.low),
            if r.over { "  OVER" } else { "" }
        );
    }
    if live.queues.is_empty() {
        return;
    }
    println!(
        "\n{:<40} {:>7} {:>7} {:>9} {:>9} {:>7}  LAST ERROR",
        "DELIVERY QUEUE", "ACTIVE", "RETRY", "IN FLIGHT", "DELIVERED", "FAILED"
    );
    for q in &live.queues {
        println!(
            "{:<40} {:>7} {:>7} {:>9} {:>9} {:>7}  {}",
            q.name,
            q.active,
            q.retry,
            q.in_flight,
            q.delivered,
            q.failed,
            q.last_error.as_deref().unwrap_or("-").replace('\n', " / ")
        );
    }
}
