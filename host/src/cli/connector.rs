//! `mta connector list`: the connectors of the host configuration (Exchange's
//! Get-SendConnector, Get-DeliveryAgentConnector and Get-ForeignConnector).

use crate::agents::{file, Libraries, Pipeline};
use crate::config::HostConfig;
use crate::routing::address_space::AddressSpace;
use crate::service::Service;
use clap::Subcommand;
use mta_agent_sdk::AgentClass;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// List every connector: kind, name, address spaces, state, limits, and what serves it.
    List,
}

fn spaces(list: &[AddressSpace]) -> String {
    list.iter()
        .map(|s| format!("{}:{};{}", s.kind, s.space, s.cost))
        .collect::<Vec<_>>()
        .join(", ")
}

fn state(enabled: bool, scoped: bool) -> &'static str {
    match (enabled, scoped) {
        (false, _) => "disabled",
        (true, true) => "enabled, scoped",
        (true, false) => "enabled",
    }
}

pub fn run(config: &HostConfig, command: ConnectorCommand) -> anyhow::Result<ExitCode> {
    let ConnectorCommand::List = command;
    // Which delivery agent serves each protocol, from the Transport agents file.
    let mut protocols: Vec<(String, String)> = Vec::new();
    if let Some(path) = config
        .agents_file(Service::Transport)
        .filter(|p| p.exists())
    {
        if let Ok(parsed) = file::read(path) {
            if let Ok(pipeline) = Pipeline::build(
                &parsed,
                Service::Transport,
                &Libraries::for_command(),
                None,
                1,
            ) {
                for a in pipeline
                    .agents
                    .iter()
                    // A canary serves some of its agent's connections; the agent names the protocol.
                    .filter(|a| a.class == AgentClass::Delivery && a.canary_of.is_none())
                {
                    protocols.push((a.delivery_protocol.to_ascii_uppercase(), a.name.clone()));
                }
            }
        }
    }
    let mut any = false;
    for c in &config.send_connectors {
        any = true;
        println!(
            "Send connector {:?} ({})",
            c.name,
            state(c.enabled, c.scoped)
        );
        println!("  address spaces: {}", spaces(&c.address_spaces));
        if c.smart_hosts.is_empty() {
            println!(
                "  next hops:      mail exchangers from DNS (MX), port {}",
                c.port
            );
        } else {
            println!("  smart hosts:    {}", c.smart_hosts.join(", "));
        }
        println!(
            "  tls:            {}{}",
            c.tls,
            c.tls_domain
                .as_deref()
                .map(|d| format!(" (certificates must name {d})"))
                .unwrap_or_default()
        );
        println!(
            "  limits:         max message size {}, max concurrent connections {}",
            c.max_message_size.map_or("none".into(), |n| n.to_string()),
            c.max_concurrent_connections.unwrap_or(20)
        );
    }
    for c in &config.delivery_agent_connectors {
        any = true;
        let served = protocols
            .iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(&c.delivery_protocol))
            .map(|(_, name)| format!("agent {name:?}"))
            .unwrap_or_else(|| "no enabled delivery agent; the queue retries".into());
        println!(
            "Delivery Agent connector {:?} ({})",
            c.name,
            state(c.enabled, c.scoped)
        );
        println!("  address spaces:    {}", spaces(&c.address_spaces));
        println!(
            "  delivery protocol: {} (served by {served})",
            c.delivery_protocol
        );
        println!(
            "  limits:            max message size {}, max concurrent connections {}, max messages per connection {}",
            c.max_message_size.map_or("none".into(), |n| n.to_string()),
            c.max_concurrent_connections.unwrap_or(5),
            c.max_messages_per_connection.unwrap_or(20)
        );
    }
    for c in &config.foreign_connectors {
        any = true;
        println!(
            "Foreign connector {:?} ({})",
            c.name,
            state(c.enabled, c.scoped)
        );
        println!("  address spaces: {}", spaces(&c.address_spaces));
        println!(
            "  drop directory: {}{}",
            c.drop_directory.display(),
            if c.drop_directory.is_dir() {
                ""
            } else {
                " (missing: the queue retries)"
            }
        );
        println!(
            "  quota:          {}",
            c.quota_bytes
                .map_or("none".into(), |n| format!("{n} bytes"))
        );
    }
    if !any {
        println!("No connectors: mail for other domains goes to the Unreachable queue.");
    }
    Ok(ExitCode::SUCCESS)
}
