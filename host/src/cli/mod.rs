//! The command line: `mta run`, `mta status`, `mta agent ...`, `mta queue ...`,
//! `mta message ...`, `mta track`, `mta user ...`, `mta config check`.

mod agent;
mod agent_new;
mod agent_try;
mod check;
mod connector;
mod control;
mod message;
mod queue;
mod run;
mod status;
mod trace;
mod track;
mod user;

use crate::config::HostConfig;
use crate::service::Service;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// A mail transfer agent extended by transport agents loaded at run time.
#[derive(Debug, Parser)]
#[command(name = "mta", version, about, long_about = None)]
pub struct Cli {
    /// Host configuration file. Default: `mta.toml` in the current directory if present,
    /// otherwise the embedded defaults.
    #[arg(long, global = true, env = "MTA_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// The Transport service's agents file (overrides the host configuration).
    #[arg(long, global = true, value_name = "PATH")]
    agents_config: Option<PathBuf>,
    /// The Front End service's agents file (overrides the host configuration).
    #[arg(long, global = true, value_name = "PATH")]
    fetagents_config: Option<PathBuf>,
    /// Log format on standard error: text, or json (one object per line).
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<crate::config::LogFormat>,
    /// When an agent library is refused for its layout, also print abi_stable's full report
    /// (thousands of lines) after the one-line error.
    #[arg(long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services (all roles by default).
    Run(run::RunArgs),
    /// Manage transport agents (Exchange's *-TransportAgent cmdlets).
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
    },
    /// List connectors (send, delivery agent, foreign).
    Connector {
        #[command(subcommand)]
        command: connector::ConnectorCommand,
    },
    /// What the running server runs: roles, listeners, agent pipelines, queues, back
    /// pressure. Exits 3 when no server runs.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The Transport service's queues: list, show, retry, suspend, resume, resubmit.
    Queue {
        #[command(subcommand)]
        command: queue::QueueCommand,
    },
    /// Messages in the queues: list, suspend, resume, remove, export, release, redirect.
    Message {
        #[command(subcommand)]
        command: message::MessageCommand,
    },
    /// The story of messages from the tracking log: received, routed, sent, delivered, refused.
    Track(track::TrackArgs),
    /// What each agent changed in a message, from its pipeline snapshots (messageSnapshot).
    Trace(trace::TraceArgs),
    /// Manage the users who may authenticate (the users file).
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Check configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the host configuration and every agents file, loading the agent libraries,
    /// without starting anything. Exits non-zero on any error.
    Check,
    /// Make the running server reload its host configuration now (as SIGHUP does); prints
    /// what it did, or the error that kept the running configuration.
    Reload,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        quiet_on_closed_output();
    }
    let mut config = match load_config(&cli) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("error: {message}");
            // A broken file must not hide the running server, whose status says whether it
            // kept its configuration, and which is asked to reload once the file is fixed.
            let asks_server = matches!(
                cli.command,
                Command::Status { .. }
                    | Command::Config {
                        command: ConfigCommand::Reload
                    }
            );
            match asks_server.then(|| data_dir_of_broken(&cli)).flatten() {
                Some(c) => c,
                None => return ExitCode::from(2),
            }
        }
    };
    if cli.verbose {
        crate::agents::library::print_full_reports();
    }
    if matches!(cli.command, Command::Agent { .. } | Command::Config { .. }) {
        learn_agents_files(&cli, &mut config);
    }
    let result = match cli.command {
        Command::Run(args) => run::run(config, args),
        Command::Agent { command } => agent::run(&config, command),
        Command::Connector { command } => connector::run(&config, command),
        Command::Status { json } => status::run(&config, json),
        Command::Queue { command } => queue::run(&config, command),
        Command::Message { command } => message::run(&config, command),
        Command::User { command } => user::run(&config, command),
        Command::Track(args) => track::run(&config, args),
        Command::Trace(args) => trace::run(&config, args),
        Command::Config {
            command: ConfigCommand::Check,
        } => check::run(&config),
        Command::Config {
            command: ConfigCommand::Reload,
        } => control::change(&config, &crate::control::Request::Reload),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<HostConfig, String> {
    let path = cli
        .config
        .clone()
        .or_else(|| Some(PathBuf::from("mta.toml")).filter(|p| p.exists()));
    let mut config = HostConfig::load(path.as_deref()).map_err(|d| d.to_string())?;
    if let Some(p) = &cli.agents_config {
        config.agents.transport = Some(p.clone());
    }
    if let Some(p) = &cli.fetagents_config {
        config.agents.frontend = Some(p.clone());
    }
    config.log.format = cli.log_format.unwrap_or(config.log.format);
    Ok(config)
}

/// `mta queue list | head` closes the pipe early: the command ends there quietly (status
/// 141, as a shell reports SIGPIPE) instead of printing a panic. The server keeps the
/// default hook: its panics are always reported.
fn quiet_on_closed_output() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// The embedded defaults with the top-level `data_dir` of a configuration file that does not
/// parse as a whole (read from its own line), so the server it names can still be asked.
fn data_dir_of_broken(cli: &Cli) -> Option<HostConfig> {
    #[derive(serde::Deserialize)]
    struct Top {
        data_dir: PathBuf,
    }
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("mta.toml"));
    let text = std::fs::read_to_string(&path).ok()?;
    let data_dir = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| toml::from_str::<Top>(l).ok())
        .map_or_else(|| PathBuf::from("mta-data"), |t| t.data_dir);
    let mut config = HostConfig::load(None).ok()?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    config.data_dir = match dir {
        Some(dir) if data_dir.is_relative() => dir.join(data_dir),
        _ => data_dir,
    };
    eprintln!(
        "(asking the server whose data directory is {})",
        config.data_dir.display()
    );
    Some(config)
}

/// Without `--agents-config`/`--fetagents-config`, a running server says which agents files it
/// serves, so `mta agent ...` edits the files that are live.
fn learn_agents_files(cli: &Cli, config: &mut HostConfig) {
    if cli.agents_config.is_some() && cli.fetagents_config.is_some() {
        return;
    }
    let status = match control::status(config) {
        Ok(Some(status)) => status,
        Ok(None) => return,
        Err(e) => {
            // A server that does not answer may serve other files than these.
            eprintln!(
                "warning: the running server did not say which agents files it serves ({e:#}); using those of {}",
                config
                    .source
                    .as_deref()
                    .map_or("the embedded defaults".into(), |p| p.display().to_string())
            );
            return;
        }
    };
    for p in status.pipelines {
        let (Some(file), Some(service)) = (p.file, Service::parse(&p.service)) else {
            continue;
        };
        match service {
            Service::Transport if cli.agents_config.is_none() => {
                config.agents.transport = Some(PathBuf::from(file));
            }
            Service::FrontEnd if cli.fetagents_config.is_none() => {
                config.agents.frontend = Some(PathBuf::from(file));
            }
            _ => {}
        }
    }
}

/// The agents file a management command edits: configured, or the default name beside the
/// host configuration.
fn agents_file_for(config: &HostConfig, service: Service) -> PathBuf {
    if let Some(p) = config.agents_file(service) {
        return p.to_path_buf();
    }
    // Only the Mailbox service has no default (it runs no agents).
    let dir = config
        .source
        .as_deref()
        .and_then(|p| p.parent())
        .filter(|d| !d.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join(match service {
        Service::FrontEnd => "fetagents.config",
        _ => "agents.config",
    })
}

/// Parses `--service`.
fn parse_service(value: &str) -> Result<Service, String> {
    Service::parse(value)
        .ok_or_else(|| format!("unknown service {value:?}: expected transport or frontend"))
}
