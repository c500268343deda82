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

pub fn run(mut config: HostConfig, args: RunArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init(config.log.format);
    // Everything this process makes is its user's alone (the data dir itself is 0750).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let mut roles = Vec::new();
    for role in &args.roles {
        match Service::parse(role) {
            Some(s) if !roles.contains(&s) => roles.push(s),
            Some(_) => {}
            None => bail!("unknown role {role:?}: expected frontend, transport or mailbox"),
        }
    }
    config.local_roles = roles.clone();
    if let Some(path) = &config.agents.mailbox {
        bail!(
            "{}: an agents file for the Mailbox Transport service is refused: {}",
            path.display(),
            Service::Mailbox.accepted_classes()
        );
    }
    // Bind as whoever started us (root may bind port 25), then become the configured user
    // before any agent is loaded or any mail read.
    let account = match (&config.user, crate::privileges::is_root()) {
        (Some(user), true) => {
            let account = crate::privileges::lookup(user, config.group.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            crate::agents::strict_modes::trust_user(account.uid);
            Some(account)
        }
        (Some(user), false) => {
            tracing::info!(message = "Not started as root: the user setting is not applied.", user = %user);
            None
        }
        (None, _) => None,
    };
    if let Some(path) = &config.source {
        crate::agents::strict_modes::check(path, "the host configuration")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    check_credentials(&config)?;
    let listeners = crate::server::bind(&config, &roles)?;
    let metrics = crate::metrics::endpoint::bind(&config)?;
    if let Some(account) = &account {
        crate::privileges::prepare_data_dir(&config.data_dir, account)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        crate::privileges::drop_to(account).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if crate::privileges::is_root() {
        refuse_root_agents(&config, &roles)?;
    }
    make_data_dir(&config.data_dir)?;
    std::fs::create_dir_all(config.run_dir())
        .with_context(|| format!("creating {}", config.run_dir().display()))?;
    if config.tracking.enabled {
        crate::tracking::install(config.tracking_dir(), config.tracking.days).with_context(
            || {
                format!(
                    "opening the tracking log {}",
                    config.tracking_dir().display()
                )
            },
        )?;
    }
    // Always installed: an agents file may turn tracing on at any reload.
    crate::agents::snapshot::install(config.snapshot_settings()).with_context(|| {
        format!(
            "opening the snapshot directory {}",
            config.snapshots_dir().display()
        )
    })?;
    crate::agents::pool::AgentPool::init(config.agents.pool_threads);
    let libraries = Arc::new(Libraries::new(config.run_dir().join("shadow")));
    let mut hosts = Vec::new();
    let mut by_service = std::collections::HashMap::new();
    // Checked again at every reload: an agents file written after start is refused too.
    // Both keys are read at start only: a running server needs a restart after either.
    let root_refusal = (crate::privileges::is_root() && !root_agents_allowed(&config))
        .then(|| format!("{}, then restart mta", root_agents_hint(&config)));
    for &service in roles.iter().filter(|s| **s != Service::Mailbox) {
        let file = config.agents_file(service).map(|p| p.to_path_buf());
        let host = AgentHost::start(
            service,
            file,
            Arc::clone(&libraries),
            Some(config.agents_status_path(service)),
            config.agents.quarantine_after_hung,
            root_refusal.clone(),
        )
        .map_err(|d| anyhow::anyhow!("{}", crate::agents::diagnostic::render(&d)))?;
        host.set_canary_rules(
            config.agents.canary_margin_percent,
            config.agents.canary_min_calls,
        );
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
        let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
        let mut services = tokio::spawn(crate::server::run(
            config,
            roles,
            listeners,
            metrics,
            by_service,
            stopped,
            (reload.clone(), reloads),
        ));
        // On this runtime's own workers: if they wedge, the pings stop and systemd acts.
        let watchdog = tokio::spawn(crate::systemd::watchdog());
        // A service that cannot start (a port in use) ends the process with its error.
        tokio::select! {
            result = &mut services => {
                return result.map_err(|e| anyhow::anyhow!("services stopped: {e}"))?;
            }
            signal = wait_for_shutdown(trigger, reload) => signal?,
        }
        crate::systemd::stopping("Draining: finishing the sessions and deliveries under way.");
        let _ = stop.send(true);
        let stopped = services
            .await
            .map_err(|e| anyhow::anyhow!("services stopped: {e}"))?;
        watchdog.abort();
        stopped
    })?;
    // Nothing left to wait for: blocking file work still running gets a moment, hung agent
    // calls (on their own threads) none.
    runtime.shutdown_timeout(Duration::from_secs(1));
    drop(controller);
    crate::tracking::flush();
    tracing::info!(message = "mta stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Agents in a process that is root run as root: refused unless `allow_root_agents` says
/// otherwise (the embedded defaults, for trying mta out, allow it with a warning).
fn refuse_root_agents(config: &HostConfig, roles: &[Service]) -> anyhow::Result<()> {
    let with_agents: Vec<String> = roles
        .iter()
        .filter_map(|s| config.agents_file(*s))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if with_agents.is_empty() {
        return Ok(());
    }
    match root_agents_allowed(config) {
        true => {
            tracing::warn!(message = "Agents run as root. Set user in mta.toml to run mta unprivileged.", agents_files = %with_agents.join(", "));
            Ok(())
        }
        false => bail!(
            "refusing to run agents as root ({}): {}",
            with_agents.join(", "),
            root_agents_hint(config)
        ),
    }
}

/// Whether agents may run in a root process: `allow_root_agents`, by default only on the
/// embedded defaults (no mta.toml).
fn root_agents_allowed(config: &HostConfig) -> bool {
    config.allow_root_agents.unwrap_or(config.source.is_none())
}

/// What the operator should do about agents in a root process.
fn root_agents_hint(config: &HostConfig) -> String {
    format!(
        "set user = \"mta\" in {} so mta switches to that user once its listeners are bound, or allow_root_agents = true",
        config
            .source
            .as_deref()
            .map_or("mta.toml".into(), |p| p.display().to_string())
    )
}

/// Passwords must not be readable by every user of the machine: mta.toml when it holds users,
/// and the users file (which must also pass StrictModes).
fn check_credentials(config: &HostConfig) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let readable =
        |path: &std::path::Path| std::fs::metadata(path).is_ok_and(|m| m.mode() & 0o004 != 0);
    if let Some(source) = config.source.as_deref() {
        if !config.auth.users.is_empty() && readable(source) {
            bail!(
                "{} holds [[auth.users]] and is readable by every user of this machine: chmod o-r {}, or move the users to the users file (mta user add)",
                source.display(),
                source.display()
            );
        }
    }
    if let Some(file) = config.auth.users_file.as_deref().filter(|p| p.exists()) {
        crate::agents::strict_modes::check(file, "the users file")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if readable(file) {
            bail!(
                "the users file {} is readable by every user of this machine: chmod o-r {}",
                file.display(),
                file.display()
            );
        }
    }
    Ok(())
}

/// The data directory, made 0750 if missing (what it holds is made by a process whose umask
/// is 077: owner only).
fn make_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("creating data_dir {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
            .with_context(|| format!("chmod of data_dir {}", dir.display()))?;
    }
    Ok(())
}

/// Waits for SIGINT or SIGTERM; SIGHUP reloads every agent pipeline and the host
/// configuration.
async fn wait_for_shutdown(
    trigger: std::sync::mpsc::Sender<Trigger>,
    reload: tokio::sync::mpsc::UnboundedSender<bool>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!(message = "SIGHUP: reloading the host configuration and agent pipelines.");
                let _ = trigger.send(Trigger::All);
                let _ = reload.send(true);
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
