//! `mta run`: start the services and the agent host, reload live, stop on SIGINT/SIGTERM.

use crate::agents::reload::Trigger;
use crate::agents::{AgentHost, Libraries, ReloadController};
use crate::config::HostConfig;
use crate::service::Service;
use anyhow::{bail, Context};
use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The roles to run, comma-separated: frontend, transport, mailbox.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "frontend,transport,mailbox"
    )]
    roles: Vec<String>,
}

pub fn run(config: HostConfig, args: RunArgs) -> anyhow::Result<ExitCode> {
    init_tracing();
    let mut roles = Vec::new();
    for role in &args.roles {
        match Service::parse(role) {
            Some(s) if !roles.contains(&s) => roles.push(s),
            Some(_) => {}
            None => bail!("unknown role {role:?}: expected frontend, transport or mailbox"),
        }
    }
    if let Some(path) = &config.agents.mailbox {
        bail!(
            "{}: an agents file for the Mailbox Transport service is refused: {}",
            path.display(),
            Service::Mailbox.accepted_classes()
        );
    }
    std::fs::create_dir_all(config.run_dir())
        .with_context(|| format!("creating {}", config.run_dir().display()))?;
    crate::agents::pool::AgentPool::init(config.agents.pool_threads);
    let libraries = Arc::new(Libraries::new(config.run_dir().join("shadow")));
    let mut hosts = Vec::new();
    let mut by_service = std::collections::HashMap::new();
    for &service in roles.iter().filter(|s| **s != Service::Mailbox) {
        let file = config.agents_file(service).map(|p| p.to_path_buf());
        let host = AgentHost::start(
            service,
            file,
            Arc::clone(&libraries),
            Some(config.agents_status_path(service)),
            config.agents.quarantine_after_hung,
        )
        .map_err(|d| anyhow::anyhow!("{}", crate::agents::diagnostic::render(&d)))?;
        by_service.insert(service, Arc::clone(&host));
        hosts.push(host);
    }
    let controller = ReloadController::start(
        hosts.clone(),
        Duration::from_millis(config.agents.reload_debounce_ms),
    )
    .context("starting the agent file watcher")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let trigger = controller.trigger();
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut services = tokio::spawn(crate::server::run(config, roles, by_service, stopped));
        // A service that cannot start (a port in use) ends the process with its error.
        tokio::select! {
            result = &mut services => {
                return result.map_err(|e| anyhow::anyhow!("services stopped: {e}"))?;
            }
            signal = wait_for_shutdown(trigger) => signal?,
        }
        let _ = stop.send(true);
        services
            .await
            .map_err(|e| anyhow::anyhow!("services stopped: {e}"))?
    })?;
    // Nothing left to wait for: blocking file work still running gets a moment, hung agent
    // calls (on their own threads) none.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(controller);
    tracing::info!(message = "mta stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT or SIGTERM; SIGHUP reloads every agent pipeline.
async fn wait_for_shutdown(trigger: std::sync::mpsc::Sender<Trigger>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!(message = "SIGHUP: reloading agent pipelines.");
                let _ = trigger.send(Trigger::All);
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MTA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
