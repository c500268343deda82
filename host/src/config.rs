//! The host configuration (`mta.toml`): every key optional, the defaults documented in
//! `docs/configuration.md`, so `mta run` works with no file at all.

use crate::agents::diagnostic::{Diagnostic, Position};
use crate::service::Service;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The whole host configuration, paths resolved.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// This node's name, used in greetings and Received fields.
    pub hostname: String,
    /// Where queues, mailboxes, pickup, replay and drop directories live.
    pub data_dir: PathBuf,
    /// Agents files and reload settings.
    pub agents: AgentsConfig,
    /// Front End Transport service.
    pub frontend: ListenerConfig,
    /// Transport service.
    pub transport: ListenerConfig,
    /// Mailbox Transport delivery.
    pub mailbox: ListenerConfig,
    /// The directory: accepted domains and mailboxes.
    pub organization: OrganizationConfig,
    /// STARTTLS certificate.
    pub tls: TlsConfig,
    /// Pickup and replay directories, and outbox polling.
    pub directories: DirectoriesConfig,
    /// SMTP AUTH.
    pub auth: AuthConfig,
    /// Routing: this server's site, the topology, expiry and retries.
    pub routing: RoutingConfig,
    /// Send connectors: SMTP to other organisations.
    pub send_connectors: Vec<SendConnectorConfig>,
    /// Delivery Agent connectors: queues served by delivery agents.
    pub delivery_agent_connectors: Vec<DeliveryAgentConnectorConfig>,
    /// Foreign connectors: drop directories for non-SMTP systems.
    pub foreign_connectors: Vec<ForeignConnectorConfig>,
    /// At a stop (SIGTERM), how long sessions and deliveries under way may take to finish, in
    /// seconds.
    pub drain_timeout_secs: u64,
    /// Back pressure: the marks over which the Transport service takes no new mail.
    pub back_pressure: BackPressureConfig,
    /// The message tracking log.
    pub tracking: TrackingConfig,
    /// Pipeline tracing's bounds (tracing itself is turned on in an agents file).
    pub snapshots: SnapshotsConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// `[log]`: how log events are written.
    pub log: LogConfig,
    /// The user `mta run` becomes once its listeners are bound, when started as root.
    pub user: Option<String>,
    /// Its group (default: the user's primary group).
    pub group: Option<String>,
    /// Whether agents may run in a process that is root (default: false with a configuration
    /// file; the embedded defaults, for trying mta out, allow it with a warning).
    pub allow_root_agents: Option<bool>,
    /// Where the configuration was read from (`None`: embedded defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The text it was read from, for a reload to tell whether the file changed since.
    #[serde(skip)]
    pub source_text: Option<std::sync::Arc<str>>,
    /// The roles this process runs (set by `mta run`): the others are reached over TCP.
    #[serde(skip)]
    pub local_roles: Vec<Service>,
}

/// `[agents]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// The Transport service's agents file (default: `agents.config` beside `mta.toml`).
    pub transport: Option<PathBuf>,
    /// The Front End's agents file (default: `fetagents.config` beside `mta.toml`).
    pub frontend: Option<PathBuf>,
    /// Refused if set: the Mailbox Transport service runs no agents.
    pub mailbox: Option<PathBuf>,
    /// Quiet time after a change to an agents file or one of its libraries before reloading,
    /// in milliseconds. Short (50 by default): it is most of the time from a write to the new
    /// pipeline serving, and a file replaced at once needs no more; a file written in place
    /// holds the reload back until its writes stop.
    pub reload_debounce_ms: u64,
    /// Threads that run agent calls (their own, apart from the file I/O).
    pub pool_threads: usize,
    /// Hung calls (abandoned past twice the time limit) after which an agent is quarantined:
    /// left out of new pipelines until its library or its entry changes.
    pub quarantine_after_hung: u64,
    /// A canary is rolled back when its fault-or-timeout rate exceeds its current agent's by
    /// more than this many percentage points.
    pub canary_margin_percent: f64,
    /// Calls into a canary before its rate is judged (fewer calls say little).
    pub canary_min_calls: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            transport: None,
            frontend: None,
            mailbox: None,
            reload_debounce_ms: 50,
            pool_threads: 16,
            quarantine_after_hung: 3,
            canary_margin_percent: 5.0,
            canary_min_calls: 100,
        }
    }
}

/// A service's SMTP listener (a receive connector).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port` to listen on (default 127.0.0.1:2525, :2526 and :2527).
    #[serde(default)]
    pub listen: String,
    /// Client networks that may relay (default: none for the Front End, loopback for Transport).
    #[serde(default)]
    pub trusted: Option<Vec<crate::net::IpRange>>,
    /// Client networks allowed to connect at all (default: anyone; Mailbox: loopback).
    #[serde(default)]
    pub remote_ranges: Option<Vec<crate::net::IpRange>>,
    /// Largest message, in bytes (default 36 MiB).
    #[serde(default)]
    pub max_message_size: Option<usize>,
    /// Most recipients per message (default 200).
    #[serde(default)]
    pub max_recipients: Option<usize>,
    /// Idle timeout in seconds (default 300).
    #[serde(default)]
    pub idle_timeout_secs: Option<u64>,
    /// Longest session in seconds, however busy (default 1800).
    #[serde(default)]
    pub session_timeout_secs: Option<u64>,
    /// Concurrent connections from one IP (default 100).
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Permission groups: AnonymousUsers, ExchangeUsers, ExchangeServers (default: all three
    /// for the Front End and Transport, ExchangeServers for Mailbox). ExchangeServers applies
    /// to the `trusted` ranges, which are empty on the Front End by default.
    #[serde(default)]
    pub permission_groups: Option<Vec<String>>,
    /// Front End only: the Transport nodes to relay to (default: this host's Transport).
    #[serde(default)]
    pub transport_nodes: Option<Vec<String>>,
    /// Transport only: the Front End nodes, which may name their client with XCLIENT
    /// (default: loopback).
    #[serde(default)]
    pub frontend_nodes: Option<Vec<crate::net::IpRange>>,
}

impl ListenerConfig {
    fn at(listen: &str) -> Self {
        Self {
            listen: listen.into(),
            trusted: None,
            remote_ranges: None,
            max_message_size: None,
            max_recipients: None,
            idle_timeout_secs: None,
            session_timeout_secs: None,
            max_connections_per_ip: None,
            permission_groups: None,
            frontend_nodes: None,
            transport_nodes: None,
        }
    }
}

/// `[tracking]`: the message tracking log, JSON lines under `<data_dir>/tracking/`, a file
/// per UTC day (Exchange's message tracking log; `mta track` reads it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackingConfig {
    /// Whether the services write it.
    pub enabled: bool,
    /// How many days of files are kept (Exchange's MessageTrackingLogMaxAge, 30 days).
    pub days: u32,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            days: 30,
        }
    }
}

/// `[snapshots]`: bounds of pipeline tracing, which `<messageSnapshot enabled="true"/>` in an
/// agents file turns on for that service. A busy server traces only the senders asked for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotsConfig {
    /// Trace only mail items from these envelope senders (compared ignoring case); empty:
    /// every item.
    pub senders: Vec<String>,
    /// A message larger than this many bytes is recorded as its envelope only (and the log
    /// says so).
    pub max_message_size: u64,
    /// Days a message's snapshots are kept (0: kept until removed by hand).
    pub days: u32,
}

impl Default for SnapshotsConfig {
    fn default() -> Self {
        Self {
            senders: Vec::new(),
            max_message_size: 10 * 1024 * 1024,
            days: 7,
        }
    }
}

/// `[metrics]`: Prometheus metrics in the text format at `GET /metrics`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The address the endpoint listens on (`127.0.0.1:9725`); none (the default): no endpoint.
    /// It is bound with the SMTP listeners, before privileges are dropped.
    pub listen: Option<String>,
}

/// `[log]`: the form of the log on standard error.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (the default) or `json`; `--log-format` overrides it.
    pub format: LogFormat,
}

/// `[back_pressure]`: over any high-water mark the Transport service answers new MAIL with
/// 452 4.3.1 and the pickup and replay directories pause; once every resource is under its
/// low-water mark, mail is taken again.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackPressureConfig {
    /// Items accepted and not yet settled (waiting for the categorizer or in a delivery
    /// queue's memory).
    pub queued_items_high: u64,
    /// See `queued_items_high`.
    pub queued_items_low: u64,
    /// The bytes of those items held in memory, in MiB (a spooled body counts as its
    /// reference only: it is on disk).
    pub queued_mb_high: u64,
    /// See `queued_mb_high`.
    pub queued_mb_low: u64,
    /// The process's resident memory, as a percentage of the machine's.
    pub memory_percent_high: u64,
    /// See `memory_percent_high`.
    pub memory_percent_low: u64,
    /// Used space of the file system holding the queue, as a percentage.
    pub disk_percent_high: u64,
    /// See `disk_percent_high`.
    pub disk_percent_low: u64,
}

impl Default for BackPressureConfig {
    fn default() -> Self {
        Self {
            queued_items_high: 2000,
            queued_items_low: 1500,
            queued_mb_high: 48,
            queued_mb_low: 32,
            memory_percent_high: 75,
            memory_percent_low: 70,
            disk_percent_high: 99,
            disk_percent_low: 97,
        }
    }
}

impl BackPressureConfig {
    /// Each mark pair, by key name: (low key, low, high key, high, percentage?).
    fn pairs(&self) -> [(&'static str, u64, &'static str, u64, bool); 4] {
        [
            (
                "queued_items_low",
                self.queued_items_low,
                "queued_items_high",
                self.queued_items_high,
                false,
            ),
            (
                "queued_mb_low",
                self.queued_mb_low,
                "queued_mb_high",
                self.queued_mb_high,
                false,
            ),
            (
                "memory_percent_low",
                self.memory_percent_low,
                "memory_percent_high",
                self.memory_percent_high,
                true,
            ),
            (
                "disk_percent_low",
                self.disk_percent_low,
                "disk_percent_high",
                self.disk_percent_high,
                true,
            ),
        ]
    }

    /// Checks that each low-water mark is under its high-water mark and percentages are
    /// percentages; the error names the key at its place in `text`.
    fn check(&self, path: &Path, text: &str) -> Result<(), Diagnostic> {
        let at = |key: &str| {
            let table = text.find("[back_pressure]").unwrap_or(0);
            text[table..]
                .find(key)
                .map(|i| Position::at(path, text, table + i))
                .unwrap_or_else(|| Position::file(path))
        };
        for (low_key, low, high_key, high, percent) in self.pairs() {
            if percent && high > 100 {
                return Err(Diagnostic::new(
                    &at(high_key),
                    format!("[back_pressure] {high_key} = {high}: expected a percentage, 1 to 100"),
                ));
            }
            if high == 0 || low >= high {
                return Err(Diagnostic::new(
                    &at(low_key),
                    format!("[back_pressure] {low_key} = {low} must be under {high_key} = {high} (and {high_key} above 0)"),
                ));
            }
        }
        Ok(())
    }
}

/// `[tls]`: the certificate offered with STARTTLS. Without both keys, a self-signed
/// certificate for `hostname` is generated under `<data_dir>/tls/` on first run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Offer STARTTLS (default true).
    pub starttls: Option<bool>,
    /// PEM certificate chain.
    pub certificate: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// PEM CA certificates trusted, besides Mozilla's roots, for next hops' certificates.
    pub ca_file: Option<PathBuf>,
}

/// `[routing]`: this server in the topology, and how long messages may wait.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// This server's name (default: `hostname`).
    pub server: Option<String>,
    /// This server's site.
    pub site: String,
    /// Other servers and their sites (`[[routing.servers]]`).
    pub servers: Vec<ServerConfig>,
    /// Site links with their costs (`[[routing.site_links]]`).
    pub site_links: Vec<SiteLinkConfig>,
    /// A message still undelivered after this many hours fails (NDR 4.4.7).
    pub expiration_hours: u64,
    /// The sender is told of a delay once, after this many hours.
    pub delay_notification_hours: u64,
    /// First retry delay in ms; it doubles up to `retry_max_ms`.
    pub retry_base_ms: u64,
    /// Longest retry delay in ms.
    pub retry_max_ms: u64,
    /// DNS servers (`ip:port`) for MX lookups (default: the system's resolver configuration).
    pub dns_servers: Vec<String>,
    /// How long an idle outbound connection is kept for the next message to the same next hop,
    /// in ms; then it is closed with QUIT.
    pub idle_connection_ms: u64,
    /// How long a TCP connect to a next hop may take, in ms; a host that does not answer by
    /// then is taken as down and the next one (the next MX) is tried.
    pub connect_timeout_ms: u64,
    /// MX routing skips mail exchangers that are this host or have a loopback, private or
    /// otherwise non-public address (turn off only to test on one machine).
    pub refuse_private_mx: bool,
    /// MX routing honours DANE TLSA records where the resolver authenticates them (DNSSEC).
    pub dane: bool,
    /// MX routing honours destination domains' MTA-STS policies.
    pub mta_sts: bool,
    /// The HTTPS port of MTA-STS policy hosts (443; another only to test).
    pub mta_sts_port: u16,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            server: None,
            site: "Default-First-Site-Name".into(),
            servers: Vec::new(),
            site_links: Vec::new(),
            expiration_hours: 48,
            delay_notification_hours: 4,
            retry_base_ms: 500,
            retry_max_ms: 600_000,
            dns_servers: Vec::new(),
            idle_connection_ms: 20_000,
            connect_timeout_ms: 10_000,
            refuse_private_mx: true,
            dane: true,
            mta_sts: true,
            mta_sts_port: 443,
        }
    }
}

/// A server of the organisation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name.
    pub name: String,
    /// Site.
    pub site: String,
}

/// A link between two sites.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteLinkConfig {
    /// The two sites.
    pub sites: [String; 2],
    /// Its cost.
    pub cost: u32,
}

fn yes() -> bool {
    true
}

fn smtp_port() -> u16 {
    25
}

/// `[[send_connectors]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConnectorConfig {
    /// Name (unique among connectors).
    pub name: String,
    /// Address spaces, `type:space;cost` (`SMTP:*;1`).
    pub address_spaces: Vec<crate::routing::address_space::AddressSpace>,
    /// Smart hosts, `host:port`, tried in order. Empty: deliver to each recipient domain's
    /// mail exchangers found in DNS (MX records, else the domain's own address).
    #[serde(default)]
    pub smart_hosts: Vec<String>,
    /// The port of mail exchangers found through DNS (default 25).
    #[serde(default = "smtp_port")]
    pub port: u16,
    /// Whether it is used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Visible only to servers of its source servers' site.
    #[serde(default)]
    pub scoped: bool,
    /// Servers hosting it (default: this server).
    #[serde(default)]
    pub source_servers: Option<Vec<String>>,
    /// Largest message it takes, in bytes.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// STARTTLS: `opportunistic` (default), `required` (`encryption_only`),
    /// `certificate_validation`, `domain_validation` or `none` (see `smtp::client_tls`).
    #[serde(default)]
    pub tls: crate::smtp::send::TlsMode,
    /// The name next hops' certificates must carry with `domain_validation` (default: the
    /// smart host's or MX's name).
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Concurrent connections through this connector (default 20).
    #[serde(default)]
    pub max_concurrent_connections: Option<usize>,
}

/// `[[delivery_agent_connectors]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryAgentConnectorConfig {
    /// Name (unique among connectors).
    pub name: String,
    /// Address spaces (`MOBILE:*;1`).
    pub address_spaces: Vec<crate::routing::address_space::AddressSpace>,
    /// The delivery protocol; the delivery agent declaring it serves this connector's queue.
    pub delivery_protocol: String,
    /// Whether it is used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Visible only to servers of its source servers' site.
    #[serde(default)]
    pub scoped: bool,
    /// Servers hosting it (default: this server).
    #[serde(default)]
    pub source_servers: Option<Vec<String>>,
    /// Largest message it takes, in bytes.
    #[serde(default)]
    pub max_message_size: Option<u64>,
    /// Concurrent connections (default 5).
    #[serde(default)]
    pub max_concurrent_connections: Option<usize>,
    /// Messages per connection (default 20).
    #[serde(default)]
    pub max_messages_per_connection: Option<usize>,
}

/// `[[foreign_connectors]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignConnectorConfig {
    /// Name (unique among connectors).
    pub name: String,
    /// Address spaces.
    pub address_spaces: Vec<crate::routing::address_space::AddressSpace>,
    /// The drop directory (must exist: while it is missing, the queue retries).
    pub drop_directory: PathBuf,
    /// Most bytes the drop directory may hold; over it, the queue retries.
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// Whether it is used.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Visible only to servers of its source servers' site.
    #[serde(default)]
    pub scoped: bool,
    /// Servers hosting it (default: this server).
    #[serde(default)]
    pub source_servers: Option<Vec<String>>,
    /// Largest message it takes, in bytes.
    #[serde(default)]
    pub max_message_size: Option<u64>,
}

/// `[directories]`: where the pickup and replay directories are and how they are polled.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectoriesConfig {
    /// Pickup directory (default `<data_dir>/pickup`).
    pub pickup: Option<PathBuf>,
    /// Replay directory (default `<data_dir>/replay`).
    pub replay: Option<PathBuf>,
    /// Poll interval of the pickup and replay directories and of mailbox outboxes, in ms.
    pub poll_interval_ms: u64,
    /// Most files taken from a directory per poll (a rate limit).
    pub max_per_poll: usize,
}

impl Default for DirectoriesConfig {
    fn default() -> Self {
        Self {
            pickup: None,
            replay: None,
            poll_interval_ms: 500,
            max_per_poll: 100,
        }
    }
}

/// `[auth]`: users who may authenticate (AUTH PLAIN and LOGIN) and then relay.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Offer AUTH only over TLS (default true).
    pub require_tls: bool,
    /// Users in mta.toml (their passwords hashed, see `crate::auth`).
    pub users: Vec<UserConfig>,
    /// The users file `mta user` writes (default: `users` beside mta.toml).
    pub users_file: Option<PathBuf>,
    /// Failed AUTH attempts from one address before it is locked out.
    pub max_failures: u32,
    /// The window those failures are counted in, in seconds.
    pub failure_window_secs: u64,
    /// How long a locked-out address gets `454 4.7.0` to AUTH, in seconds.
    pub lockout_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            require_tls: true,
            users: Vec::new(),
            users_file: None,
            max_failures: 5,
            failure_window_secs: 900,
            lockout_secs: 900,
        }
    }
}

/// One `[[auth.users]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name (usually an address).
    pub name: String,
    /// The password: a hash (`{ARGON2ID}...`, `{SHA512-CRYPT}...`, as `mta user hash` prints)
    /// or, discouraged, `{PLAIN}...` or the bare password.
    pub password: String,
}

/// `[organization]`: the example organisation by default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrganizationConfig {
    /// Domains we accept mail for.
    pub accepted_domains: Vec<String>,
    /// Local parts of the mailboxes in the first accepted domain.
    pub mailboxes: Vec<String>,
}

impl Default for OrganizationConfig {
    fn default() -> Self {
        Self {
            accepted_domains: vec!["example.test".into()],
            mailboxes: vec!["alice".into(), "bob".into(), "postmaster".into()],
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            hostname: "mta.example.test".into(),
            data_dir: PathBuf::from("mta-data"),
            agents: AgentsConfig::default(),
            frontend: ListenerConfig::at("127.0.0.1:2525"),
            transport: ListenerConfig::at("127.0.0.1:2526"),
            mailbox: ListenerConfig::at("127.0.0.1:2527"),
            organization: OrganizationConfig::default(),
            tls: TlsConfig::default(),
            directories: DirectoriesConfig::default(),
            auth: AuthConfig::default(),
            routing: RoutingConfig::default(),
            send_connectors: Vec::new(),
            delivery_agent_connectors: Vec::new(),
            foreign_connectors: Vec::new(),
            drain_timeout_secs: 30,
            back_pressure: BackPressureConfig::default(),
            tracking: TrackingConfig::default(),
            snapshots: SnapshotsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            user: None,
            group: None,
            allow_root_agents: None,
            source: None,
            source_text: None,
            local_roles: Vec::new(),
        }
    }
}

impl HostConfig {
    /// Reads `path`, or the embedded defaults when `None`. Relative paths in the file resolve
    /// against its directory.
    pub fn load(path: Option<&Path>) -> Result<Self, Diagnostic> {
        let Some(path) = path else {
            return Ok(Self::default().resolved(Path::new(".")));
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostic::file(path, format!("cannot read the host configuration: {e}"))
        })?;
        Self::from_text(path, text)
    }

    /// The configuration in `text`, read from `path` (relative paths in it are resolved
    /// against the file's directory).
    pub fn from_text(path: &Path, text: String) -> Result<Self, Diagnostic> {
        let mut config: HostConfig = toml::from_str(&text).map_err(|e| {
            let position = e
                .span()
                .map(|s| Position::at(path, &text, s.start))
                .unwrap_or_else(|| Position::file(path));
            Diagnostic::new(&position, e.message().to_string())
        })?;
        config.back_pressure.check(path, &text)?;
        config.source = Some(path.to_path_buf());
        config.source_text = Some(text.into());
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Ok(config.resolved(dir))
    }

    fn resolved(mut self, dir: &Path) -> Self {
        fn resolve_in(dir: &Path, p: &Path) -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        }
        let resolve = |p: &Path| resolve_in(dir, p);
        self.data_dir = resolve_in(dir, &self.data_dir);
        for (listener, default) in [
            (&mut self.frontend, "127.0.0.1:2525"),
            (&mut self.transport, "127.0.0.1:2526"),
            (&mut self.mailbox, "127.0.0.1:2527"),
        ] {
            if listener.listen.is_empty() {
                listener.listen = default.to_string();
            }
        }
        // An agents file that does not exist yet is watched all the same: creating it (or
        // `mta agent install`) loads its agents without a restart.
        let beside = |name: &str| Some(dir.join(name));
        self.agents.transport = self
            .agents
            .transport
            .as_deref()
            .map(resolve)
            .or_else(|| beside("agents.config"));
        self.agents.frontend = self
            .agents
            .frontend
            .as_deref()
            .map(resolve)
            .or_else(|| beside("fetagents.config"));
        self.agents.mailbox = self.agents.mailbox.as_deref().map(resolve);
        self.tls.certificate = self.tls.certificate.as_deref().map(resolve);
        self.auth.users_file = self
            .auth
            .users_file
            .as_deref()
            .map(resolve)
            .or_else(|| beside("users"));
        self.tls.key = self.tls.key.as_deref().map(resolve);
        self.tls.ca_file = self.tls.ca_file.as_deref().map(resolve);
        for foreign in &mut self.foreign_connectors {
            foreign.drop_directory = resolve(&foreign.drop_directory);
        }
        let data_dir = self.data_dir.clone();
        self.directories.pickup = Some(
            self.directories
                .pickup
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| data_dir.join("pickup")),
        );
        self.directories.replay = Some(
            self.directories
                .replay
                .as_deref()
                .map(resolve)
                .unwrap_or_else(|| data_dir.join("replay")),
        );
        self
    }

    /// The agents file of a service, if it has one.
    pub fn agents_file(&self, service: Service) -> Option<&Path> {
        match service {
            Service::FrontEnd => self.agents.frontend.as_deref(),
            Service::Transport => self.agents.transport.as_deref(),
            Service::Mailbox => self.agents.mailbox.as_deref(),
        }
    }

    /// Where a service spools large bodies: Transport under its queue (where the queues keep
    /// them, by hard link), the others in nameless files under `<data_dir>/spool`.
    pub fn spool_place(&self, service: Service) -> crate::message::body::SpoolPlace {
        use crate::message::body::SpoolPlace;
        match service {
            Service::Transport => SpoolPlace::named(&self.data_dir.join("queue").join("spool")),
            _ => SpoolPlace::anonymous(&self.data_dir.join("spool")),
        }
    }

    /// The Unix socket over which this host's own services reach `service` (Transport,
    /// Mailbox Transport): in the run directory, which only the MTA's user may enter.
    pub fn service_socket(&self, service: Service) -> PathBuf {
        self.run_dir().join(format!("{service}.sock"))
    }

    /// Where another service of this host connects to reach `service`: its socket when this
    /// process runs it, else its `listen` address.
    pub fn node_address(&self, service: Service) -> String {
        if service != Service::FrontEnd && self.local_roles.contains(&service) {
            return format!("unix:{}", self.service_socket(service).display());
        }
        match service {
            Service::FrontEnd => self.frontend.listen.clone(),
            Service::Transport => self.transport.listen.clone(),
            Service::Mailbox => self.mailbox.listen.clone(),
        }
    }

    /// Where running services write their status files.
    pub fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }

    /// Where the message tracking log is written.
    pub fn tracking_dir(&self) -> PathBuf {
        self.data_dir.join("tracking")
    }

    /// Where pipeline tracing writes its snapshots.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }

    /// Pipeline tracing's settings.
    pub fn snapshot_settings(&self) -> crate::agents::snapshot::Settings {
        crate::agents::snapshot::Settings {
            dir: self.snapshots_dir(),
            senders: self
                .snapshots
                .senders
                .iter()
                .map(|s| {
                    s.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_lowercase()
                })
                .collect(),
            max_message_size: self.snapshots.max_message_size,
            days: self.snapshots.days,
        }
    }

    /// The status file of a service's agent host.
    pub fn agents_status_path(&self, service: Service) -> PathBuf {
        self.run_dir().join(format!("agents-{service}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HostConfig, Diagnostic> {
        let path = std::env::temp_dir().join(format!("mta-config-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let loaded = HostConfig::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn back_pressure_marks_are_checked_with_their_place() {
        let e = load(
            "hostname = \"x\"\n[back_pressure]\nqueued_items_high = 10\nqueued_items_low = 10\n",
        )
        .unwrap_err();
        assert_eq!((e.position.line, e.position.column), (4, 1), "{e}");
        assert!(
            e.message
                .contains("queued_items_low = 10 must be under queued_items_high = 10"),
            "{e}"
        );
        let e = load("[back_pressure]\ndisk_percent_high = 120\n").unwrap_err();
        assert_eq!(e.position.line, 2, "{e}");
        assert!(e.message.contains("expected a percentage"), "{e}");
        let ok = load("[back_pressure]\nqueued_items_high = 10\nqueued_items_low = 5\n").unwrap();
        assert_eq!(ok.back_pressure.queued_items_high, 10);
    }
}
