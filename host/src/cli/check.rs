//! `mta config check`: validate everything without starting anything.

use crate::agents::{file, Libraries, Pipeline};
use crate::config::HostConfig;
use crate::service::Service;
use std::process::ExitCode;

pub fn run(config: &HostConfig) -> anyhow::Result<ExitCode> {
    let libraries = Libraries::for_command();
    let mut failed = false;
    let organization =
        std::sync::Arc::new(crate::organization::Organization::new(&config.organization));
    let mut host_problems = Vec::new();
    if let Err(e) = crate::routing::Router::new(config, organization) {
        host_problems.push(format!("routing: {e}"));
    }
    for server in &config.routing.dns_servers {
        if server.parse::<std::net::SocketAddr>().is_err() {
            host_problems.push(format!(
                "[routing] dns_servers: {server:?} is not ip:port (such as \"127.0.0.1:53\")"
            ));
        }
    }
    for (name, listener) in [
        ("frontend", &config.frontend),
        ("transport", &config.transport),
        ("mailbox", &config.mailbox),
    ] {
        if let Some(groups) = &listener.permission_groups {
            if let Err(e) = crate::smtp::receive::Permissions::from_names(groups) {
                host_problems.push(format!("[{name}] permission_groups: {e}"));
            }
        }
    }
    let origin = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "host configuration (embedded defaults)".into());
    if host_problems.is_empty() {
        println!("{origin}: ok");
    } else {
        failed = true;
        for p in host_problems {
            eprintln!("{origin}: {p}");
        }
    }
    if let Some(path) = &config.agents.mailbox {
        eprintln!(
            "{}: an agents file for the Mailbox Transport service is refused: {}",
            path.display(),
            Service::Mailbox.accepted_classes()
        );
        failed = true;
    }
    for service in [Service::FrontEnd, Service::Transport] {
        let Some(path) = config.agents_file(service).filter(|p| p.exists()) else {
            println!("{service}: no agents file");
            continue;
        };
        let built = file::read(path)
            .and_then(|parsed| Pipeline::build(&parsed, service, &libraries, None, 1));
        match built {
            Ok(pipeline) => {
                for warning in &pipeline.warnings {
                    println!("{}: warning: {warning}", path.display());
                }
                println!(
                    "{}: ok ({service}: {} enabled agent(s))",
                    path.display(),
                    pipeline.agents.len()
                );
            }
            Err(diagnostics) => {
                failed = true;
                for d in diagnostics {
                    eprintln!("{d}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
