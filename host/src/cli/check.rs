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
    if let Err(e) = crate::smtp::client_tls::roots_with(config.tls.ca_file.as_deref()) {
        host_problems.push(e);
    }
    if let Some(path) = &config.source {
        if let Err(e) = crate::agents::strict_modes::check(path, "the host configuration") {
            host_problems.push(e);
        }
    }
    let origin = config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "host configuration (embedded defaults)".into());
    for warning in unsafe_settings(config) {
        println!("{origin}: warning: {warning}");
    }
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

/// Settings that work but are unsafe on a machine shared with other users (docs/security.md).
fn unsafe_settings(config: &HostConfig) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if let Ok(meta) = std::fs::metadata(&config.data_dir) {
        if meta.mode() & 0o007 != 0 {
            out.push(format!(
                "data_dir {} can be entered by every user (mode {:o}): mail and queues are exposed; chmod o-rwx {}",
                config.data_dir.display(),
                meta.mode() & 0o7777,
                config.data_dir.display()
            ));
        }
    }
    let auth = crate::auth::Authenticator::new(&config.auth);
    if auth.has_plain_passwords() {
        out.push("some passwords are stored in plain text: store hashes (mta user add, or mta user hash for [[auth.users]])".into());
    }
    if let Some(source) = &config.source {
        let readable = std::fs::metadata(source).is_ok_and(|m| m.mode() & 0o004 != 0);
        if readable && !config.auth.users.is_empty() {
            out.push(format!(
                "{} holds [[auth.users]] and is readable by every user: mta run refuses it (chmod o-r)",
                source.display()
            ));
        }
    }
    let agents = [Service::FrontEnd, Service::Transport]
        .iter()
        .any(|s| config.agents_file(*s).is_some_and(|p| p.exists()));
    let as_root = config.user.is_none() && crate::privileges::is_root();
    if agents && (config.allow_root_agents == Some(true) || (as_root && config.source.is_none())) {
        out.push("agents may run as root (allow_root_agents, or the embedded defaults run as root): set user = \"mta\" instead".into());
    } else if agents && as_root && config.allow_root_agents.is_none() {
        out.push("started as root, mta run refuses to run these agents: set user = \"mta\"".into());
    }
    for (name, listener) in [
        ("transport", &config.transport),
        ("mailbox", &config.mailbox),
    ] {
        if listener
            .trusted
            .as_ref()
            .is_some_and(|ranges| ranges.iter().any(|r| r.contains([127, 0, 0, 1].into())))
        {
            out.push(format!(
                "[{name}] trusted includes loopback: every local user may relay (or deliver into mailboxes) through it"
            ));
        }
    }
    if !config.routing.refuse_private_mx {
        out.push("[routing] refuse_private_mx = false: a domain's DNS can point this host's mail at itself or the local network".into());
    }
    out
}
