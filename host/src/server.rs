//! Starting the services of the roles this process runs, each on its own SMTP listener, and
//! stopping them together.

use crate::agents::AgentHost;
use crate::config::{HostConfig, ListenerConfig};
use crate::frontend::ProxySink;
use crate::mailbox::delivery::{MailboxPolicy, MailboxSink, OrganizationPolicy};
use crate::mailbox::store::MailboxStore;
use crate::net::IpRange;
use crate::organization::Organization;
use crate::service::Service;
use crate::smtp::receive::{self, ReceiveConfig, Receiver};
use crate::transport::{Categorizer, Queues, SubmissionSink};
use anyhow::Context;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
) -> ReceiveConfig {
    let mut rc = ReceiveConfig::new(service, &config.hostname);
    if let Some(n) = listener.max_message_size {
        rc.max_message_size = n;
    }
    if let Some(n) = listener.max_recipients {
        rc.max_recipients = n;
    }
    if let Some(s) = listener.idle_timeout_secs {
        rc.idle_timeout = Duration::from_secs(s);
    }
    if let Some(n) = listener.max_connections_per_ip {
        rc.max_connections_per_ip = n;
    }
    rc.trusted = listener.trusted.clone().unwrap_or_else(|| match service {
        Service::Transport => loopback(),
        _ => Vec::new(),
    });
    rc.allowed_clients = listener
        .remote_ranges
        .clone()
        .or_else(|| (service == Service::Mailbox).then(loopback));
    rc
}

async fn bind(service: Service, listen: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("the {service} service cannot listen on {listen}"))
}

/// Runs the services of `roles` until `shutdown` turns true.
pub async fn run(
    config: HostConfig,
    roles: Vec<Service>,
    agents: HashMap<Service, Arc<AgentHost>>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let organization = Arc::new(Organization::new(&config.organization));
    let tls = Some(crate::tls::acceptor(&config).context("setting up TLS")?);
    let auth = Arc::new(config.auth.clone());
    let mut tasks = tokio::task::JoinSet::new();

    if roles.contains(&Service::Mailbox) {
        let listener = bind(Service::Mailbox, &config.mailbox.listen).await?;
        let store = Arc::new(MailboxStore::new(
            config.data_dir.join("mailboxes"),
            &config.hostname,
        ));
        for mailbox in &config.organization.mailboxes {
            store
                .create(mailbox)
                .with_context(|| format!("creating the mailbox {mailbox}"))?;
        }
        let receiver = Receiver::new(
            receive_config(Service::Mailbox, &config, &config.mailbox),
            None,
            Arc::new(MailboxSink {
                store,
                organization: Arc::clone(&organization),
            }),
            Arc::new(MailboxPolicy(Arc::clone(&organization))),
        );
        tracing::info!(message = "Mailbox Transport delivery listening.", address = %config.mailbox.listen);
        tasks.spawn(receive::serve(listener, receiver, shutdown.clone()));
    }

    if roles.contains(&Service::Transport) {
        let listener = bind(Service::Transport, &config.transport.listen).await?;
        let queues = Arc::new(Queues::open(&config.data_dir).context("opening the queues")?);
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        let categorizer = Arc::new(Categorizer {
            queues: Arc::clone(&queues),
            organization: Arc::clone(&organization),
            mailbox_address: config.mailbox.listen.clone(),
            hostname: config.hostname.clone(),
        });
        let retry = wake_tx.clone();
        tokio::spawn(categorizer.run(wake_rx, retry));
        let receiver = Receiver::with_security(
            receive_config(Service::Transport, &config, &config.transport),
            agents.get(&Service::Transport).cloned(),
            Arc::new(SubmissionSink::new(queues, wake_tx)),
            Arc::new(OrganizationPolicy(Arc::clone(&organization))),
            tls.clone(),
            Arc::clone(&auth),
        );
        tracing::info!(message = "Transport listening.", address = %config.transport.listen);
        tasks.spawn(receive::serve(listener, receiver, shutdown.clone()));
    }

    if roles.contains(&Service::FrontEnd) {
        let listener = bind(Service::FrontEnd, &config.frontend.listen).await?;
        let nodes = config
            .frontend
            .transport_nodes
            .clone()
            .unwrap_or_else(|| vec![config.transport.listen.clone()]);
        let receiver = Receiver::with_security(
            receive_config(Service::FrontEnd, &config, &config.frontend),
            agents.get(&Service::FrontEnd).cloned(),
            Arc::new(ProxySink::new(nodes, &config.hostname)),
            Arc::new(OrganizationPolicy(Arc::clone(&organization))),
            tls.clone(),
            Arc::clone(&auth),
        );
        tracing::info!(message = "Front End Transport listening.", address = %config.frontend.listen);
        tasks.spawn(receive::serve(listener, receiver, shutdown.clone()));
    }

    while tasks.join_next().await.is_some() {}
    Ok(())
}
