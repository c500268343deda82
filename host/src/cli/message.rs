//! `mta message ...`: one message in the Transport service's queues (Exchange's Get-Message,
//! Suspend-/Resume-Message, Remove-Message, Export-Message, Resume-Message for Poison,
//! Redirect; Postfix's `postsuper -h/-H/-d/-r` and `postcat -q`).

use super::control;
use crate::config::HostConfig;
use crate::control::{call, CallError, Request};
use crate::transport::queue_management::{self, MessageFilter, MessageInfo};
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum MessageCommand {
    /// The messages in the queues, with every filter given matching.
    List {
        /// The envelope sender.
        #[arg(long)]
        sender: Option<String>,
        /// One of the envelope recipients.
        #[arg(long)]
        recipient: Option<String>,
        /// The Message-ID field (angle brackets optional).
        #[arg(long)]
        message_id: Option<String>,
        /// The queue.
        #[arg(long)]
        queue: Option<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hold a message (every copy of it) in its delivery queue until resumed; kept across
    /// restarts. A copy being delivered finishes its attempt.
    Suspend {
        /// The queue id (the 250 reply after DATA names it).
        id: String,
    },
    /// Release a suspended message: its copies are due now.
    Resume {
        /// The queue id.
        id: String,
    },
    /// Remove a message from the queues, silently or with a non-delivery report.
    Remove {
        /// The queue id.
        id: String,
        /// Send the sender a non-delivery report (550 5.3.0) for each recipient.
        #[arg(long)]
        ndr: bool,
    },
    /// Write a message as queued (an .eml) to standard output or a file.
    Export {
        /// The queue id.
        id: String,
        /// The file to write (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Send a message from Poison or quarantine back to the Submission queue, to be
    /// categorized again by the agents as they are now.
    Release {
        /// The queue id.
        id: String,
    },
    /// Deliver a message to another address instead of its recipients.
    Redirect {
        /// The queue id.
        id: String,
        /// The address it goes to.
        #[arg(long)]
        to: String,
    },
}

pub fn run(config: &HostConfig, command: MessageCommand) -> anyhow::Result<ExitCode> {
    match command {
        MessageCommand::List {
            sender,
            recipient,
            message_id,
            queue,
            json,
        } => list(
            config,
            MessageFilter {
                sender,
                recipient,
                message_id,
                queue,
                id: None,
            },
            json,
        ),
        MessageCommand::Suspend { id } => control::change(config, &Request::MessageSuspend { id }),
        MessageCommand::Resume { id } => control::change(config, &Request::MessageResume { id }),
        MessageCommand::Remove { id, ndr } => {
            control::change(config, &Request::MessageRemove { id, ndr })
        }
        MessageCommand::Release { id } => control::change(config, &Request::MessageRelease { id }),
        MessageCommand::Redirect { id, to } => {
            control::change(config, &Request::MessageRedirect { id, to })
        }
        MessageCommand::Export { id, output } => {
            let bytes = match call(&config.data_dir, &Request::MessageExport { id: id.clone() }) {
                Ok((response, payload)) if response.ok => payload,
                Ok((response, _)) => {
                    eprintln!(
                        "refused: {}",
                        response.error.as_deref().unwrap_or("no reason given")
                    );
                    return Ok(ExitCode::FAILURE);
                }
                Err(CallError::NotRunning(_)) => {
                    eprintln!("From the queue files: no server is running.");
                    queue_management::offline_export(&config.data_dir, &id)?
                }
                Err(e) => return Err(e.into()),
            };
            match output {
                Some(path) => std::fs::write(&path, &bytes)?,
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the messages matching `filter`; exits 1 when there are none.
pub fn list(config: &HostConfig, filter: MessageFilter, json: bool) -> anyhow::Result<ExitCode> {
    let (source, found): (_, Vec<MessageInfo>) = control::read(
        config,
        &Request::MessageList {
            filter: filter.clone(),
        },
        || queue_management::offline_messages(&config.data_dir, &filter),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        println!("{source}");
        for m in &found {
            print_message(m);
        }
        println!(
            "{}",
            queue_management::plural(found.len(), "message", "messages")
        );
    }
    Ok(if found.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_message(m: &MessageInfo) {
    let next_hop = m
        .next_hop
        .clone()
        .or_else(|| m.queue.strip_prefix("delivery-").map(str::to_string));
    println!(
        "{}  {}  {}  age {}  attempts {}  size {}  from <{}>  to {}{}",
        m.id,
        m.queue,
        m.state,
        control::age(m.received_ms),
        m.attempts,
        control::size(m.size),
        m.from,
        m.recipients.join(", "),
        next_hop
            .map(|h| format!("  next hop {h}"))
            .unwrap_or_default(),
    );
    if let Some(id) = &m.message_id {
        println!("    message-id: {id}");
    }
    if let Some(reason) = &m.reason {
        println!("    reason: {reason}");
    }
    if let Some(last) = &m.last_error {
        println!("    last error: {last}");
    }
    if m.next_attempt_ms > 0 && m.state == "retry" {
        println!("    next attempt {}", control::until(m.next_attempt_ms));
    }
}
