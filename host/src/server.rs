//! Starting the services of the roles this process runs, each on its own SMTP listener, and
//! stopping them together.

use crate::agents::AgentHost;
use crate::config::{HostConfig, ListenerConfig};
use crate::frontend::{FrontEndSink, ProxySink};
use crate::mailbox::delivery::{MailboxPolicy, MailboxSink, OrganizationPolicy};
use crate::mailbox::store::MailboxStore;
use crate::net::IpRange;
use crate::organization::Organization;
use crate::service::Service;
use crate::smtp::receive::{self, ReceiveConfig, Receiver};
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// The socket over which this host's own services reach `service`, in the run directory (which
/// only the MTA's user may enter; the socket itself is 0600).
fn own_socket(config: &HostConfig, service: Service) -> anyhow::Result<tokio::net::UnixListener> {
    let path = config.service_socket(service);
    if path.as_os_str().len() > 100 {
        anyhow::bail!(
            "the {service} service's socket path {} is too long for a Unix socket: choose a shorter data_dir",
            path.display()
        );
    }
    std::fs::create_dir_all(config.run_dir())?;
    // A socket left by an earlier run goes.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("the {service} service cannot listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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
/// the Prometheus endpoint.
pub async fn run(
    config: HostConfig,
    roles: Vec<Service>,
    listeners: HashMap<Service, std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    agents: HashMap<Service, Arc<AgentHost>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let organization = Arc::new(Organization::new(&config.organization));
    let tls = if config.tls.starttls.unwrap_or(true) {
        let tls = crate::tls::Tls::load(&config).context("setting up TLS")?;
        tls.keep_renewed();
        Some(tls)
    } else {
        None
    };
    let auth = Arc::new(crate::auth::Authenticator::new(&config.auth));
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
            mailboxes: organization.mailboxes(),
            organization: Arc::clone(&organization),
            transport: config.node_address(Service::Transport),
            hostname: config.hostname.clone(),
            progress: config.data_dir.join("queue").join("outbox"),
            spool: config.spool_place(Service::Mailbox),
        };
        tokio::spawn(outbox.run(
            Duration::from_millis(config.directories.poll_interval_ms),
            shutdown.clone(),
        ));
        let receiver = Receiver::new(
            receive_config(Service::Mailbox, &config, &config.mailbox, &organization)?,
            None,
            Arc::new(MailboxSink {
                store,
                organization: Arc::clone(&organization),
                deliveries: Default::default(),
            }),
            Arc::new(MailboxPolicy(Arc::clone(&organization))),
        );
        let own = own_socket(&config, Service::Mailbox)?;
        tracing::info!(message = "Mailbox Transport delivery listening.", address = %config.mailbox.listen);
        tasks.spawn(receive::serve(
            listener,
            Some(own),
            receiver,
            shutdown.clone(),
        ));
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
        let receiver = Receiver::with_security(
            receive_config(
                Service::Transport,
                &config,
                &config.transport,
                &organization,
            )?,
            agents.get(&Service::Transport).cloned(),
            Arc::new(submission),
            Arc::new(OrganizationPolicy(Arc::clone(&organization))),
            tls.clone(),
            Arc::clone(&auth),
        );
        let own = own_socket(&config, Service::Transport)?;
        tracing::info!(message = "Transport listening.", address = %config.transport.listen);
        tasks.spawn(receive::serve(
            listener,
            Some(own),
            receiver,
            shutdown.clone(),
        ));
        transport = Some(started);
    }

    if roles.contains(&Service::FrontEnd) {
        let listener = listeners.remove(&Service::FrontEnd).expect("bound above");
        let nodes = config
            .frontend
            .transport_nodes
            .clone()
            .unwrap_or_else(|| vec![config.node_address(Service::Transport)]);
        let receiver = Receiver::with_security(
            receive_config(Service::FrontEnd, &config, &config.frontend, &organization)?,
            agents.get(&Service::FrontEnd).cloned(),
            Arc::new(FrontEndSink(ProxySink::new(nodes, &config.hostname))),
            Arc::new(OrganizationPolicy(Arc::clone(&organization))),
            tls.clone(),
            Arc::clone(&auth),
        );
        tracing::info!(message = "Front End Transport listening.", address = %config.frontend.listen);
        tasks.spawn(receive::serve(listener, None, receiver, shutdown.clone()));
    }

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
            transport: transport.as_ref().map(|t: &crate::transport::Transport| {
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
