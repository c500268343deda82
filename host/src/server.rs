//! Starting the services of the roles this process runs, each on its own SMTP listener, and
//! stopping them together.

use crate::agents::AgentHost;
use crate::config::HostConfig;
use crate::mailbox::store::MailboxStore;
use crate::reconfiguration::{receiver_for, Generation, Reconfiguration, Sinks};
use crate::service::Service;
use crate::smtp::receive;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The socket over which this host's own services reach `service`, in the run directory (which
/// only the MTA's user may enter; the socket itself is 0600).
fn own_socket(config: &HostConfig, service: Service) -> anyhow::Result<tokio::net::UnixListener> {
    private_socket(
        config,
        &config.service_socket(service),
        &format!("the {service} service"),
    )
}

/// A Unix socket at `path` in the run directory that only the MTA's user may open.
fn private_socket(
    config: &HostConfig,
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<tokio::net::UnixListener> {
    if path.as_os_str().len() > 100 {
        anyhow::bail!(
            "{what}'s socket path {} is too long for a Unix socket: choose a shorter data_dir",
            path.display()
        );
    }
    std::fs::create_dir_all(config.run_dir())?;
    // A socket left by an earlier run goes.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("{what} cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Binds the listener of every role, before anything else runs (and, started as root, before
/// the switch to the configured user): a port in use stops the start-up here.
pub fn bind(
    config: &HostConfig,
    roles: &[Service],
) -> anyhow::Result<HashMap<Service, std::net::TcpListener>> {
    let mut listeners = HashMap::new();
    for (service, listener) in [
        (Service::Mailbox, &config.mailbox),
        (Service::Transport, &config.transport),
        (Service::FrontEnd, &config.frontend),
    ] {
        if roles.contains(&service) {
            let listen = &listener.listen;
            let bound = std::net::TcpListener::bind(listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("the {service} service cannot listen on {listen}"))?;
            listeners.insert(service, bound);
        }
    }
    Ok(listeners)
}

/// Runs the services of `roles` until `shutdown` turns true; `metrics`, when bound, serves
/// the Prometheus endpoint; a message on `reloads` (SIGHUP) reloads the host configuration, as
/// a change to its file does.
pub async fn run(
    config: HostConfig,
    roles: Vec<Service>,
    listeners: HashMap<Service, std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    agents: HashMap<Service, Arc<AgentHost>>,
    shutdown: watch::Receiver<bool>,
    reloads: (
        tokio::sync::mpsc::UnboundedSender<bool>,
        tokio::sync::mpsc::UnboundedReceiver<bool>,
    ),
) -> anyhow::Result<()> {
    // Watched before anything is served: a change saved as soon as a listener answers is seen
    // (its reload waits in the queue until the reload task runs).
    let (reload_requests, reload_queue) = reloads;
    let _watcher = match &config.source {
        Some(path) => match crate::reconfiguration::watch(path, reload_requests.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(message = "Cannot watch the host configuration; SIGHUP still reloads it.", path = %path.display(), error = %e);
                None
            }
        },
        None => None,
    };
    let generation = Arc::new(Generation::build(config.clone(), None)?);
    let organization = Arc::clone(&generation.organization);
    let mut tasks = tokio::task::JoinSet::new();
    let mut listeners: HashMap<Service, TcpListener> = listeners
        .into_iter()
        .map(|(service, l)| TcpListener::from_std(l).map(|l| (service, l)))
        .collect::<std::io::Result<_>>()
        .context("listening")?;
    tracing::info!(
        message = "mta running.",
        roles = %roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
        data_dir = %config.data_dir.display(),
    );

    // Bound first, so a command run as soon as a listener answers finds the server (its
    // connection waits in the backlog until the requests are served, below).
    let socket = private_socket(
        &config,
        &crate::control::socket_path(&config.data_dir),
        "the control socket",
    )?;
    let mut sinks = Sinks {
        agents: agents.clone(),
        mailbox: None,
        mailbox_deliveries: Default::default(),
        transport: None,
        organization: Arc::new(ArcSwap::from(Arc::clone(&organization))),
    };
    let mut receivers = Vec::new();
    let mut serve = |service: Service,
                     listener: TcpListener,
                     own: Option<tokio::net::UnixListener>,
                     sinks: &Sinks|
     -> anyhow::Result<()> {
        let receiver = Arc::new(ArcSwap::new(receiver_for(service, &generation, sinks)?));
        receivers.push((service, Arc::clone(&receiver)));
        tasks.spawn(receive::serve(listener, own, receiver, shutdown.clone()));
        Ok(())
    };

    if roles.contains(&Service::Mailbox) {
        let listener = listeners.remove(&Service::Mailbox).expect("bound above");
        let store = Arc::new(MailboxStore::new(
            config.data_dir.join("mailboxes"),
            &config.hostname,
        ));
        for mailbox in organization.mailboxes() {
            store
                .create(&mailbox)
                .with_context(|| format!("creating the mailbox {mailbox}"))?;
        }
        let outbox = crate::mailbox::submission::OutboxSubmission {
            store: Arc::clone(&store),
            organization: Arc::clone(&sinks.organization),
            transport: config.node_address(Service::Transport),
            hostname: config.hostname.clone(),
            progress: config.data_dir.join("queue").join("outbox"),
            spool: config.spool_place(Service::Mailbox),
        };
        tokio::spawn(outbox.run(
            Duration::from_millis(config.directories.poll_interval_ms),
            shutdown.clone(),
        ));
        sinks.mailbox = Some(store);
        let own = own_socket(&config, Service::Mailbox)?;
        serve(Service::Mailbox, listener, Some(own), &sinks)?;
        tracing::info!(message = "Mailbox Transport delivery listening.", address = %config.mailbox.listen);
    }

    let mut transport = None;
    if roles.contains(&Service::Transport) {
        let listener = listeners.remove(&Service::Transport).expect("bound above");
        let started = crate::transport::Transport::start(
            &config,
            agents.get(&Service::Transport).cloned(),
            Arc::clone(&organization),
        )
        .await?;
        let submission = started.sink.clone();
        let poll = Duration::from_millis(config.directories.poll_interval_ms);
        let formats: [(
            Option<&std::path::Path>,
            Arc<dyn crate::directories::Format>,
        ); 2] = [
            (
                config.directories.pickup.as_deref(),
                Arc::new(crate::directories::pickup::Pickup {
                    hostname: config.hostname.clone(),
                }),
            ),
            (
                config.directories.replay.as_deref(),
                Arc::new(crate::directories::replay::Replay {
                    postmaster: organization.postmaster(),
                }),
            ),
        ];
        for (dir, format) in formats {
            if let Some(dir) = dir {
                tokio::spawn(crate::directories::watch(
                    dir.to_path_buf(),
                    format,
                    Arc::new(submission.clone()),
                    config.spool_place(Service::Transport),
                    crate::directories::Polling {
                        interval: poll,
                        per_poll: config.directories.max_per_poll,
                        max_size: config
                            .transport
                            .max_message_size
                            .unwrap_or(crate::smtp::receive::DEFAULT_MAX_MESSAGE_SIZE)
                            as u64,
                    },
                    shutdown.clone(),
                ));
            }
        }
        sinks.transport = Some(submission);
        let own = own_socket(&config, Service::Transport)?;
        serve(Service::Transport, listener, Some(own), &sinks)?;
        tracing::info!(message = "Transport listening.", address = %config.transport.listen);
        transport = Some(Arc::new(started));
    }

    if roles.contains(&Service::FrontEnd) {
        let listener = listeners.remove(&Service::FrontEnd).expect("bound above");
        serve(Service::FrontEnd, listener, None, &sinks)?;
        tracing::info!(message = "Front End Transport listening.", address = %config.frontend.listen);
    }

    let reconfiguration = Arc::new(Reconfiguration::new(
        Arc::clone(&generation),
        sinks,
        receivers,
        transport.clone(),
    ));
    tokio::spawn(crate::reconfiguration::run(
        Arc::clone(&reconfiguration),
        reload_queue,
    ));
    let control = crate::control::Control::new(
        server_status(&config, &roles),
        agents.clone(),
        transport.clone(),
        reconfiguration,
    );
    tokio::spawn(crate::control::serve(
        socket,
        Arc::new(control),
        shutdown.clone(),
    ));
    let mut serving: Vec<String> = roles
        .iter()
        .map(|&service| {
            let listener = match service {
                Service::FrontEnd => &config.frontend,
                Service::Transport => &config.transport,
                Service::Mailbox => &config.mailbox,
            };
            format!("{service} on {}", listener.listen)
        })
        .collect();
    if let Some(listener) = metrics {
        let sources = crate::metrics::Sources {
            transport: transport.as_deref().map(|t: &crate::transport::Transport| {
                crate::metrics::TransportView {
                    deliveries: Arc::clone(&t.deliveries),
                    queues: Arc::clone(&t.queues),
                    pressure: Arc::clone(&t.sink.0.pressure),
                }
            }),
            agents: agents.values().cloned().collect(),
        };
        let address = listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        tracing::info!(message = "Metrics endpoint listening.", address = %address, path = "/metrics");
        serving.push(format!("metrics on {address}"));
        tokio::spawn(crate::metrics::endpoint::serve(
            listener,
            Arc::new(sources),
            shutdown.clone(),
        ));
    }
    // Every listener was bound before the start and each now has its task: connections are
    // taken from here on.
    crate::systemd::ready(&format!("Serving: {}.", serving.join(", ")));

    let mut stopping = shutdown.clone();
    let began = tokio::spawn(async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::Instant::now()
    });
    while tasks.join_next().await.is_some() {}
    // The listeners have drained; deliveries under way finish in what is left of the drain
    // timeout, and done records reach the disk.
    if let Some(transport) = transport {
        let began = if began.is_finished() {
            began.await.unwrap_or_else(|_| tokio::time::Instant::now())
        } else {
            // The listeners ended without a stop (a failure): no drain under way.
            began.abort();
            tokio::time::Instant::now()
        };
        let left = Duration::from_secs(config.drain_timeout_secs).saturating_sub(began.elapsed());
        transport.stop(left).await;
    }
    Ok(())
}

/// The fixed part of what `mta status` shows of this server.
fn server_status(config: &HostConfig, roles: &[Service]) -> crate::control::ServerStatus {
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    crate::control::ServerStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: crate::transport::delivery::now_ms(),
        config: config.source.as_deref().map(absolute),
        data_dir: absolute(&config.data_dir),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        listeners: roles
            .iter()
            .map(|&r| {
                let listen = match r {
                    Service::FrontEnd => &config.frontend.listen,
                    Service::Transport => &config.transport.listen,
                    Service::Mailbox => &config.mailbox.listen,
                };
                (r.to_string(), listen.to_string())
            })
            .collect(),
        ..Default::default()
    }
}
