//! The host configuration (mta.toml), live: SIGHUP, a change to the file or `mta config
//! reload` rebuilds what the file configures aside, validates it, and swaps it in, as agent
//! pipelines are swapped. Sessions and mail items in flight keep what they started with.
//!
//! What a reload replaces: the organization (accepted domains, mailboxes), receive settings
//! (limits, trusted and remote ranges, permission groups, Front End and Transport nodes),
//! the TLS certificate, the users who may authenticate, routing (servers, sites, connectors of
//! every kind, retry and expiry times) and pipeline tracing. What it cannot replace without a
//! restart (listener addresses, the data directory, the host name, the user, directories,
//! tracking, back-pressure marks, the agents section, the metrics
//! endpoint, the log format) keeps its running value; the log and
//! `mta status` say which keys wait for a restart. A file that does not parse or does not
//! validate changes nothing, and its error (file:line:column) is logged and shown by
//! `mta status`.

use crate::agents::AgentHost;
use crate::auth::Authenticator;
use crate::config::{HostConfig, ListenerConfig};
use crate::frontend::{FrontEndSink, ProxySink};
use crate::mailbox::delivery::{MailboxPolicy, MailboxSink, OrganizationPolicy};
use crate::mailbox::store::MailboxStore;
use crate::net::IpRange;
use crate::organization::Organization;
use crate::service::Service;
use crate::smtp::receive::{ReceiveConfig, Receiver};
use crate::transport::{Transport, TransportSink};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What the receivers of one configuration are built from.
pub struct Generation {
    /// The configuration.
    pub config: HostConfig,
    /// Accepted domains and mailboxes.
    pub organization: Arc<Organization>,
    /// STARTTLS, when offered.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// Users who may authenticate.
    pub auth: Arc<Authenticator>,
}

impl Generation {
    /// Builds the pieces of `config`; `previous` hands on what outlives a configuration (the
    /// record of failed authentications).
    pub fn build(config: HostConfig, previous: Option<&Generation>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let organization = Arc::new(Organization::new(&config.organization));
        let tls = if config.tls.starttls.unwrap_or(true) {
            let tls = crate::tls::Tls::load(&config).context("setting up TLS")?;
            tls.keep_renewed();
            Some(tls)
        } else {
            None
        };
        let auth = Arc::new(match previous {
            Some(p) => p.auth.successor(&config.auth),
            None => Authenticator::new(&config.auth),
        });
        Ok(Self {
            config,
            organization,
            tls,
            auth,
        })
    }
}

/// What the receivers hand their mail to; these live as long as the server.
pub struct Sinks {
    /// Each service's agents.
    pub agents: HashMap<Service, Arc<AgentHost>>,
    /// The mailboxes, when this process runs Mailbox Transport.
    pub mailbox: Option<Arc<MailboxStore>>,
    /// Numbers Mailbox Transport's deliveries.
    pub mailbox_deliveries: Arc<AtomicU64>,
    /// The Transport service's Submission queue, when this process runs Transport.
    pub transport: Option<TransportSink>,
    /// The running generation's organization, for tasks that outlive generations (the outbox
    /// poller): replaced at each reload.
    pub organization: Arc<ArcSwap<Organization>>,
}

fn loopback() -> Vec<IpRange> {
    vec![
        "127.0.0.0/8".parse().expect("valid"),
        "::1".parse().expect("valid"),
    ]
}

fn receive_config(
    service: Service,
    config: &HostConfig,
    listener: &ListenerConfig,
    organization: &Organization,
) -> anyhow::Result<ReceiveConfig> {
    let mut rc = ReceiveConfig::new(service, &config.hostname);
    rc.postmaster = organization.postmaster();
    rc.drain_timeout = Duration::from_secs(config.drain_timeout_secs);
    rc.spool = Some(config.spool_place(service));
    if let Some(groups) = &listener.permission_groups {
        rc.permissions = crate::smtp::receive::Permissions::from_names(groups)
            .map_err(|e| anyhow::anyhow!("[{}] permission_groups: {e}", service.as_str()))?;
    }
    if let Some(n) = listener.max_message_size {
        rc.max_message_size = n;
    }
    if let Some(n) = listener.max_recipients {
        rc.max_recipients = n;
    }
    if let Some(s) = listener.idle_timeout_secs {
        rc.idle_timeout = Duration::from_secs(s);
    }
    if let Some(s) = listener.session_timeout_secs {
        rc.session_timeout = Duration::from_secs(s);
    }
    if let Some(n) = listener.max_connections_per_ip {
        rc.max_connections_per_ip = n;
    }
    // Nobody is trusted by address unless configured: this host's own services reach
    // Transport and Mailbox Transport over their sockets, which only the MTA's user can open.
    rc.trusted = listener.trusted.clone().unwrap_or_default();
    rc.allowed_clients = listener
        .remote_ranges
        .clone()
        .or_else(|| (service == Service::Mailbox).then(loopback));
    if service == Service::Transport {
        // The Front End and Mailbox Transport nodes name their clients with XCLIENT.
        rc.xclient_hosts = listener.frontend_nodes.clone().unwrap_or_default();
    }
    Ok(rc)
}

/// The receiver of `service`'s listener for the configuration `generation`.
pub fn receiver_for(
    service: Service,
    generation: &Generation,
    sinks: &Sinks,
) -> anyhow::Result<Arc<Receiver>> {
    let config = &generation.config;
    let organization = &generation.organization;
    Ok(match service {
        Service::Mailbox => {
            let store = sinks
                .mailbox
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no mailbox store"))?;
            Receiver::new(
                receive_config(Service::Mailbox, config, &config.mailbox, organization)?,
                None,
                Arc::new(MailboxSink {
                    store,
                    organization: Arc::clone(organization),
                    deliveries: Arc::clone(&sinks.mailbox_deliveries),
                }),
                Arc::new(MailboxPolicy(Arc::clone(organization))),
            )
        }
        Service::Transport => {
            let sink = sinks
                .transport
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no Submission queue"))?;
            Receiver::with_security(
                receive_config(Service::Transport, config, &config.transport, organization)?,
                sinks.agents.get(&Service::Transport).cloned(),
                Arc::new(sink),
                Arc::new(OrganizationPolicy(Arc::clone(organization))),
                generation.tls.clone(),
                Arc::clone(&generation.auth),
            )
        }
        Service::FrontEnd => {
            let nodes = config
                .frontend
                .transport_nodes
                .clone()
                .unwrap_or_else(|| vec![config.node_address(Service::Transport)]);
            Receiver::with_security(
                receive_config(Service::FrontEnd, config, &config.frontend, organization)?,
                sinks.agents.get(&Service::FrontEnd).cloned(),
                Arc::new(FrontEndSink(ProxySink::new(nodes, &config.hostname))),
                Arc::new(OrganizationPolicy(Arc::clone(organization))),
                generation.tls.clone(),
                Arc::clone(&generation.auth),
            )
        }
    })
}

/// What `mta status` shows of the host configuration's reloads.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReloadState {
    /// 1 at the start, one more with every reload that took effect.
    pub generation: u64,
    /// When the last reload was tried (ms since the epoch; 0: never).
    pub last_attempt_ms: u64,
    /// Its error, if it failed (the running configuration is older).
    pub last_error: Option<String>,
    /// Keys changed in the file that take effect only at a restart.
    pub restart_needed: Vec<String>,
}

/// Keys a running server cannot change: compared by value, each with the sentence the log
/// and `mta status` give.
fn restart_only(old: &HostConfig, new: &HostConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |what: &str, a: String, b: String| {
        if a != b {
            out.push(what.to_string());
        }
    };
    differs("hostname", old.hostname.clone(), new.hostname.clone());
    differs(
        "data_dir",
        format!("{:?}", old.data_dir),
        format!("{:?}", new.data_dir),
    );
    differs("user", format!("{:?}", old.user), format!("{:?}", new.user));
    differs(
        "group",
        format!("{:?}", old.group),
        format!("{:?}", new.group),
    );
    differs(
        "allow_root_agents",
        format!("{:?}", old.allow_root_agents),
        format!("{:?}", new.allow_root_agents),
    );
    differs(
        "drain_timeout_secs",
        old.drain_timeout_secs.to_string(),
        new.drain_timeout_secs.to_string(),
    );
    differs(
        "[frontend] listen",
        old.frontend.listen.clone(),
        new.frontend.listen.clone(),
    );
    differs(
        "[transport] listen",
        old.transport.listen.clone(),
        new.transport.listen.clone(),
    );
    differs(
        "[mailbox] listen",
        old.mailbox.listen.clone(),
        new.mailbox.listen.clone(),
    );
    differs(
        "[agents]",
        format!("{:?}", old.agents),
        format!("{:?}", new.agents),
    );
    differs(
        "[directories]",
        format!("{:?}", old.directories),
        format!("{:?}", new.directories),
    );
    differs(
        "[tracking]",
        format!("{:?}", old.tracking),
        format!("{:?}", new.tracking),
    );
    differs(
        "[metrics]",
        format!("{:?}", old.metrics),
        format!("{:?}", new.metrics),
    );
    differs("[log]", format!("{:?}", old.log), format!("{:?}", new.log));
    differs(
        "[back_pressure]",
        format!("{:?}", old.back_pressure),
        format!("{:?}", new.back_pressure),
    );
    out
}

/// Puts the running values of the keys [`restart_only`] names back into `new`, so the running
/// server stays coherent until it is restarted.
fn keep_running_values(new: &mut HostConfig, old: &HostConfig) {
    new.hostname = old.hostname.clone();
    new.data_dir = old.data_dir.clone();
    new.user = old.user.clone();
    new.group = old.group.clone();
    new.allow_root_agents = old.allow_root_agents;
    new.drain_timeout_secs = old.drain_timeout_secs;
    new.frontend.listen = old.frontend.listen.clone();
    new.transport.listen = old.transport.listen.clone();
    new.mailbox.listen = old.mailbox.listen.clone();
    new.agents = old.agents.clone();
    new.directories = old.directories.clone();
    new.tracking = old.tracking.clone();
    new.back_pressure = old.back_pressure.clone();
    new.metrics = old.metrics.clone();
    new.log = old.log.clone();
    new.local_roles = old.local_roles.clone();
}

/// Whether routing changed, so the Unreachable queue is worth routing again.
fn routing_changed(old: &HostConfig, new: &HostConfig) -> bool {
    format!(
        "{:?}{:?}{:?}{:?}{:?}",
        old.routing,
        old.send_connectors,
        old.delivery_agent_connectors,
        old.foreign_connectors,
        old.organization
    ) != format!(
        "{:?}{:?}{:?}{:?}{:?}",
        new.routing,
        new.send_connectors,
        new.delivery_agent_connectors,
        new.foreign_connectors,
        new.organization
    )
}

/// The running configuration and everything a reload replaces.
pub struct Reconfiguration {
    current: Mutex<Arc<Generation>>,
    sinks: Sinks,
    receivers: Vec<(Service, Arc<ArcSwap<Receiver>>)>,
    transport: Option<Arc<Transport>>,
    state: Mutex<ReloadState>,
    /// Reloads run one at a time.
    running: Mutex<()>,
}

impl Reconfiguration {
    /// For the running `generation`, whose listeners serve `receivers`.
    pub fn new(
        generation: Arc<Generation>,
        sinks: Sinks,
        receivers: Vec<(Service, Arc<ArcSwap<Receiver>>)>,
        transport: Option<Arc<Transport>>,
    ) -> Self {
        Self {
            current: Mutex::new(generation),
            sinks,
            receivers,
            transport,
            state: Mutex::new(ReloadState {
                generation: 1,
                ..ReloadState::default()
            }),
            running: Mutex::new(()),
        }
    }

    /// The reloads so far.
    pub fn state(&self) -> ReloadState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.current.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reads the file again and swaps in what it configures; a sentence for the operator, or
    /// why nothing changed. Unless `forced` (an operator asked: SIGHUP, `mta config reload`),
    /// a file whose text did not change is left alone; a forced reload also takes in what the
    /// file names (a renewed certificate, a users file created since). Blocking (file reads,
    /// certificate loading): call it off the async threads.
    pub fn reload(&self, forced: bool) -> Result<String, String> {
        let _one = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = self.try_reload(forced);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last_attempt_ms = crate::transport::delivery::now_ms();
        match &outcome {
            Ok(Some((sentence, restart_needed))) => {
                state.generation += 1;
                let recovered = state.last_error.take().is_some();
                state.restart_needed = restart_needed.clone();
                tracing::info!(
                    message = "Host configuration reloaded.",
                    generation = state.generation,
                    recovered
                );
                if !restart_needed.is_empty() {
                    tracing::warn!(message = "Changed keys take effect only at a restart; the running values stay until then.", keys = %restart_needed.join(", "));
                }
                Ok(sentence.clone())
            }
            Ok(None) => {
                tracing::info!(message = "Host configuration: no change.");
                state.last_error = None;
                Ok("no change".into())
            }
            Err(e) => {
                tracing::error!(message = "Host configuration reload failed; the running configuration stays.", error = %e);
                state.last_error = Some(e.clone());
                Err(e.clone())
            }
        }
    }

    fn try_reload(&self, forced: bool) -> Result<Option<(String, Vec<String>)>, String> {
        let old = self.current();
        let Some(path) = old.config.source.clone() else {
            return Err(
                "the server runs on the embedded defaults: there is no file to reload".into(),
            );
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: cannot read the host configuration: {e}",
                path.display()
            )
        })?;
        // Compared with the text the running configuration was read from (at the start, or
        // by the last reload that succeeded): the same text saved again changes nothing.
        if !forced && old.config.source_text.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        crate::agents::strict_modes::check(&path, "the host configuration")
            .map_err(|e| e.to_string())?;
        let mut config = HostConfig::from_text(&path, text).map_err(|d| d.to_string())?;
        let restart_needed = restart_only(&old.config, &config);
        keep_running_values(&mut config, &old.config);
        // Built aside: any error leaves everything running as it is.
        let generation = Generation::build(config, Some(&old)).map_err(|e| format!("{e:#}"))?;
        let mut receivers = Vec::new();
        for (service, running) in &self.receivers {
            let mut next =
                receiver_for(*service, &generation, &self.sinks).map_err(|e| format!("{e:#}"))?;
            running.load().hand_over_to(&mut next);
            receivers.push((Arc::clone(running), next));
        }
        let routing = match &self.transport {
            Some(t) => Some(
                t.prepare(&generation.config, Arc::clone(&generation.organization))
                    .map_err(|e| format!("{e:#}"))?,
            ),
            None => None,
        };
        if let Some(store) = &self.sinks.mailbox {
            for mailbox in generation.organization.mailboxes() {
                store
                    .create(&mailbox)
                    .map_err(|e| format!("creating the mailbox {mailbox}: {e}"))?;
            }
            // A mailbox taken out of the configuration keeps its Maildir, but its outbox is no
            // longer sent: say so when mail waits there.
            let kept = generation.organization.mailboxes();
            for gone in old
                .organization
                .mailboxes()
                .into_iter()
                .filter(|m| !kept.contains(m))
            {
                let outbox = store.maildir(&gone).join(".Outbox");
                let waiting = crate::mailbox::submission::pending(&outbox).len();
                if waiting > 0 {
                    tracing::warn!(message = "Mailbox removed from the configuration; the messages in its outbox are no longer sent.", mailbox = %gone, waiting, outbox = %outbox.display());
                }
            }
        }
        // Everything is built: swap.
        let reroute = routing_changed(&old.config, &generation.config);
        if let (Some(t), Some(routing)) = (&self.transport, routing) {
            t.apply(routing, &generation.config);
        }
        for (running, next) in receivers {
            running.store(next);
        }
        crate::agents::snapshot::configure(generation.config.snapshot_settings());
        self.sinks
            .organization
            .store(Arc::clone(&generation.organization));
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(generation);
        if reroute {
            if let Some(t) = &self.transport {
                t.reroute_unreachable();
            }
        }
        Ok(Some((
            if restart_needed.is_empty() {
                "reloaded".to_string()
            } else {
                format!("reloaded; needs a restart: {}", restart_needed.join(", "))
            },
            restart_needed,
        )))
    }
}

/// Reloads whenever `requests` says so, until it closes: `true` for an operator's request
/// (SIGHUP), `false` for a change seen in the file.
pub async fn run(
    reconfiguration: Arc<Reconfiguration>,
    mut requests: mpsc::UnboundedReceiver<bool>,
) {
    while let Some(mut forced) = requests.recv().await {
        // Several requests at once make one reload.
        while let Ok(more) = requests.try_recv() {
            forced |= more;
        }
        let r = Arc::clone(&reconfiguration);
        let _ = tokio::task::spawn_blocking(move || r.reload(forced)).await;
    }
}

/// Watches the host configuration file (its directory, as editors replace the file) and
/// asks for a reload a short quiet time after the file itself changed; other files in the
/// directory are ignored. The watcher stops when the returned value is dropped.
pub fn watch(
    path: &std::path::Path,
    requests: mpsc::UnboundedSender<bool>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let (events, seen) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = events.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    std::thread::Builder::new()
        .name("mta-config-watch".into())
        .spawn(move || {
            // A burst of events (an editor's write, rename and chmod) makes one request, once
            // the file has been quiet for a moment.
            while seen.recv().is_ok() {
                while seen.recv_timeout(Duration::from_millis(100)).is_ok() {}
                if requests.send(false).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
