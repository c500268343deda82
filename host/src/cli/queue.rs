//! `mta queue ...`: the Transport service's queues (Exchange's Get-Queue, Retry-Queue,
//! Suspend-Queue, Resume-Queue; Postfix's `postqueue -p` and `-f`).
//!
//! Listings come live from the running server over the control socket, or from the queue
//! files when no server runs (the first line says which). Changes need the running server.

use super::control::{self, Source};
use crate::config::HostConfig;
use crate::control::Request;
use crate::transport::queue_management::{self, MessageFilter, QueueInfo};
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queue: items, status, size, oldest item, next retry, last error; then back
    /// pressure.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The items of one queue (`submission`, `deferred`, `delivery-...`, `unreachable`,
    /// `quarantine`, `poison`): id, state, age, attempts, sender, recipients, next hop, last
    /// error. The same as `mta message list --queue QUEUE`.
    Show {
        /// The queue's name, as `mta queue list` prints it.
        queue: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Try a delivery queue's waiting copies now (`unreachable`: route its items again).
    Retry {
        /// The queue's name.
        queue: String,
    },
    /// Stop starting deliveries from a delivery queue, until resumed (kept across restarts).
    Suspend {
        /// The delivery queue's name.
        queue: String,
    },
    /// Start delivering from a suspended delivery queue again.
    Resume {
        /// The delivery queue's name.
        queue: String,
    },
    /// Route every item of the Unreachable queue again (after connectors changed).
    Resubmit {
        /// `unreachable`.
        queue: String,
    },
}

pub fn run(config: &HostConfig, command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::List { json } => {
            let (source, queues) = control::read(config, &Request::QueueList, || {
                queue_management::offline_queues(&config.data_dir)
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&queues)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{source}");
            print_queues(&queues);
            if let Source::Live(_) = source {
                if let Some(bp) = control::status(config)?.and_then(|s| s.back_pressure) {
                    print_back_pressure(&bp);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Show { queue, json } => super::message::list(
            config,
            MessageFilter {
                queue: Some(queue),
                ..MessageFilter::default()
            },
            json,
        ),
        QueueCommand::Retry { queue } => control::change(config, &Request::QueueRetry { queue }),
        QueueCommand::Suspend { queue } => {
            control::change(config, &Request::QueueSuspend { queue })
        }
        QueueCommand::Resume { queue } => control::change(config, &Request::QueueResume { queue }),
        QueueCommand::Resubmit { queue } => {
            control::change(config, &Request::QueueResubmit { queue })
        }
    }
}

fn print_queues(queues: &[QueueInfo]) {
    println!(
        "{:<40} {:>7} {:<16} {:>9} {:>7} {:>11}  LAST ERROR",
        "QUEUE", "ITEMS", "STATUS", "SIZE", "OLDEST", "NEXT RETRY"
    );
    for q in queues {
        let status = if q.held > 0 {
            format!("{}+{} held", q.status, q.held)
        } else {
            q.status.clone()
        };
        println!(
            "{:<40} {:>7} {:<16} {:>9} {:>7} {:>11}  {}",
            q.name,
            q.items,
            status,
            control::size(q.bytes),
            control::age(q.oldest_ms),
            control::until(q.next_retry_ms),
            q.last_error.as_deref().unwrap_or("-").replace('\n', " / ")
        );
    }
}

fn print_back_pressure(bp: &crate::transport::back_pressure::Pressure) {
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
}
