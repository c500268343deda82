//! `mta agent ...`: Exchange's transport agent cmdlets, as edits of the agents files.
//!
//! Every edit is checked by parsing the result, then written atomically; a running host sees the
//! file change and reloads its pipeline live.

use super::{agents_file_for, parse_service};
use crate::agents::edit::{self, EditError};
use crate::agents::{file, status, Libraries, Pipeline};
use crate::config::HostConfig;
use crate::service::Service;
use anyhow::{bail, Context};
use clap::Subcommand;
use mta_agent_sdk::{AgentClass, Event};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Register an agent library (Install-TransportAgent): checks the library, its factory, its
    /// class and the service's rules, then appends a disabled entry. With --dry-run, only
    /// checks and reports (`mta agent install --dry-run LIBRARY`).
    Install {
        /// The agent's name (1 to 64 letters, digits, space, `.`, `_`, `-`).
        #[arg(long, required_unless_present = "dry_run")]
        name: Option<String>,
        /// The factory's name inside the library (`classFactory`).
        #[arg(long, required_unless_present = "dry_run")]
        factory: Option<String>,
        /// The agent library (`assemblyPath`).
        #[arg(long, value_name = "PATH", required_unless_present = "library")]
        assembly: Option<PathBuf>,
        /// The agent library, instead of --assembly.
        #[arg(value_name = "LIBRARY", conflicts_with = "assembly")]
        library: Option<PathBuf>,
        /// A parameter for the agent, `NAME=VALUE` (repeat for several); written as
        /// `<parameter>` children and checked by the agent's factory now.
        #[arg(long = "parameter", value_name = "NAME=VALUE", value_parser = parse_parameter)]
        parameters: Vec<(String, String)>,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
        /// Load the library (from a private shadow copy), report its SDK version, compatibility,
        /// factories and classes, run the checks of an install when --name and --factory are
        /// given, and change no file.
        #[arg(long)]
        dry_run: bool,
        /// Write the entry enabled, so a running host starts using the agent at once (the
        /// entry is checked as `mta agent enable` checks it).
        #[arg(long)]
        enable: bool,
        /// Install the library as a canary of the agent --name names: a new entry (enabled as
        /// that agent is) serving PERCENT of new sessions or mail items beside it, rolled back
        /// automatically if it faults or times out more. See `promote` and `rollback`.
        #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(0..=100))]
        canary: Option<u32>,
        /// The canary entry's name (default: NAME.canary).
        #[arg(long, value_name = "NAME", requires = "canary")]
        canary_name: Option<String>,
    },
    /// Write a new agent crate: Cargo.toml, src/lib.rs with one handler and its tests, an
    /// agents.config entry (agent.xml) and a README. Then `cargo build` and `mta agent install`.
    New {
        /// The agent's name; the crate's name is made from it (`Block Spam` -> `block-spam`).
        name: String,
        /// smtp-receive, routing or delivery.
        #[arg(long, value_parser = super::agent_new::parse_class)]
        class: AgentClass,
        /// The directory to create (default: the crate's name, in the current directory). It
        /// must not exist.
        #[arg(long, value_name = "DIR")]
        path: Option<PathBuf>,
        /// Where the crate takes mta-agent-sdk from: path:DIR, git:URL#TAG or version:X.Y.Z
        /// (default: the agent-sdk/ of the checkout this host was built from, if it is still
        /// there with the same version; else the version this host was built with, from the
        /// registry).
        #[arg(long, value_name = "SOURCE", value_parser = super::agent_new::SdkSource::parse)]
        sdk: Option<super::agent_new::SdkSource>,
    },
    /// Run one agent on one message in a throwaway host (no server, no file changed): prints
    /// each event, what the agent did, and the diff of the message.
    Try {
        /// The agent library.
        #[arg(value_name = "LIBRARY")]
        library: PathBuf,
        /// The factory's name inside the library (`classFactory`).
        #[arg(long)]
        factory: String,
        /// The message, as a .eml file (RFC 5322).
        #[arg(long, value_name = "FILE")]
        eml: PathBuf,
        /// Raise only this event (repeat for several; default: every event of the class).
        #[arg(long = "event", value_name = "EVENT", value_parser = super::agent_try::parse_event)]
        events: Vec<Event>,
        /// A parameter for the agent, `NAME=VALUE` (repeat for several).
        #[arg(long = "parameter", value_name = "NAME=VALUE", value_parser = parse_parameter)]
        parameters: Vec<(String, String)>,
        /// Envelope sender (default: the address of the From field).
        #[arg(long, value_name = "ADDRESS")]
        from: Option<String>,
        /// Envelope recipient (repeat for several; default: the addresses of the To field).
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
    },
    /// Make an agent's canary the only one: its library, factory and parameters replace the
    /// agent's own entry, which then serves every new session or mail item.
    Promote {
        /// The agent's name (or its canary's).
        name: String,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// Remove an agent's canary entry: the agent serves every new session or mail item again.
    Rollback {
        /// The agent's name (or its canary's).
        name: String,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// Remove an agent's entry (Uninstall-TransportAgent).
    Uninstall {
        /// The agent's name.
        name: String,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// Enable an agent (Enable-TransportAgent).
    Enable {
        /// The agent's name.
        name: String,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// Disable an agent (Disable-TransportAgent).
    Disable {
        /// The agent's name.
        name: String,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// Move an agent to a priority, 1 being the first (Set-TransportAgent -Priority).
    SetPriority {
        /// The agent's name.
        name: String,
        /// The new priority.
        priority: usize,
        /// transport or frontend.
        #[arg(long, default_value = "transport", value_parser = parse_service)]
        service: Service,
    },
    /// List agents: name, class, enabled, priority, library, loaded generation (Get-TransportAgent).
    List {
        /// Only this service.
        #[arg(long, value_parser = parse_service)]
        service: Option<Service>,
    },
    /// Show, per service and event, the agents in the order they run (Get-TransportPipeline).
    Pipeline {
        /// Only this service.
        #[arg(long, value_parser = parse_service)]
        service: Option<Service>,
    },
}

pub fn run(config: &HostConfig, command: AgentCommand) -> anyhow::Result<ExitCode> {
    // A command that edits an agents file reports what the running server made of the edit.
    let edited = match &command {
        AgentCommand::Install {
            service, dry_run, ..
        } => (!dry_run).then_some(*service),
        AgentCommand::Uninstall { service, .. }
        | AgentCommand::Enable { service, .. }
        | AgentCommand::Disable { service, .. }
        | AgentCommand::SetPriority { service, .. }
        | AgentCommand::Promote { service, .. }
        | AgentCommand::Rollback { service, .. } => Some(*service),
        _ => None,
    };
    // A host of an older release does not count its reloads: nothing to wait for.
    let running = edited.and_then(|service| {
        status::read(&config.agents_status_path(service))
            .filter(|s| pid_alive(s.pid) && s.reload_attempts.is_some())
            .map(|s| (service, s))
    });
    match command {
        AgentCommand::Install {
            name,
            factory,
            assembly,
            library,
            parameters,
            service,
            dry_run,
            enable,
            canary,
            canary_name,
        } => {
            let assembly = assembly.or(library).context("no library given")?;
            let canary = canary.map(|percent| CanaryOf {
                percent,
                name: canary_name,
            });
            match (name, factory) {
                (Some(name), Some(factory)) => install(
                    config,
                    service,
                    &name,
                    &factory,
                    &assembly,
                    &parameters,
                    Mode { dry_run, enable },
                    canary,
                ),
                (None, None) if dry_run => dry_run_library(&assembly),
                _ => bail!("--name and --factory go together"),
            }
        }
        AgentCommand::New {
            name,
            class,
            path,
            sdk,
        } => super::agent_new::run(&name, class, path.as_deref(), sdk),
        AgentCommand::Try {
            library,
            factory,
            eml,
            events,
            parameters,
            from,
            to,
        } => {
            return super::agent_try::run(super::agent_try::TryArgs {
                library: &library,
                factory: &factory,
                eml: &eml,
                events: &events,
                parameters: &parameters,
                from: from.as_deref(),
                to: &to,
            })
        }
        AgentCommand::Uninstall { name, service } => {
            edit_entry(config, service, &name, |f, e| Ok(edit::remove(f, e)))
                .map(|_| println!("Uninstalled agent {name:?} from the {service} service."))
        }
        AgentCommand::Enable { name, service } => edit_entry(config, service, &name, |f, e| {
            let text = edit::set_enabled(f, e, true);
            verify(&f.path, &text, service)?;
            Ok(text)
        })
        .map(|_| println!("Enabled agent {name:?} in the {service} service.")),
        AgentCommand::Disable { name, service } => edit_entry(config, service, &name, |f, e| {
            Ok(edit::set_enabled(f, e, false))
        })
        .map(|_| println!("Disabled agent {name:?} in the {service} service.")),
        AgentCommand::SetPriority {
            name,
            priority,
            service,
        } => edit_entry(config, service, &name, |f, e| edit::move_to(f, e, priority)).map(|_| {
            println!("Agent {name:?} now has priority {priority} in the {service} service.")
        }),
        AgentCommand::Promote { name, service } => edit_canary(config, service, &name, true),
        AgentCommand::Rollback { name, service } => edit_canary(config, service, &name, false),
        AgentCommand::List { service } => list(config, service),
        AgentCommand::Pipeline { service } => pipeline(config, service),
    }?;
    Ok(match running {
        Some((service, before)) => follow_running(config, service, &before),
        None => ExitCode::SUCCESS,
    })
}

/// After an edit, waits (up to 5 s past the reload debounce) for the running server to reload
/// the file and says what it made of it: an operator learns here, not from the server's log,
/// that it refused the change (a library that fails to load there, agents refused in a root
/// process).
fn follow_running(config: &HostConfig, service: Service, before: &status::Status) -> ExitCode {
    let path = config.agents_status_path(service);
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(5)
        + std::time::Duration::from_millis(config.agents.reload_debounce_ms);
    let pid = before.pid;
    // The attempt to report is one that read the file as this command left it: one already
    // under way when the file was written may have read the text before.
    let written = std::fs::read(agents_file_for(config, service))
        .ok()
        .map(|b| status::file_digest(&b));
    loop {
        let now = status::read(&path).filter(|s| {
            s.pid == pid && s.reload_attempts > before.reload_attempts && s.file_digest == written
        });
        if let Some(now) = now {
            return match &now.last_error {
                Some(error) => {
                    eprintln!(
                        "error: the running server (pid {pid}) refused the change; its {service} pipeline stays at generation {}, and the file keeps the change (fix or undo it: a start would refuse it too):",
                        now.generation
                    );
                    for line in error.lines() {
                        eprintln!("  {line}");
                    }
                    ExitCode::FAILURE
                }
                None if now.generation == before.generation => {
                    println!(
                        "The running server (pid {pid}) read the change; nothing it runs changed: {service} pipeline generation {}, {}.",
                        now.generation,
                        agents(now.agents.len())
                    );
                    ExitCode::SUCCESS
                }
                None => {
                    println!(
                        "The running server (pid {pid}) now runs {service} pipeline generation {}, {}.",
                        now.generation,
                        agents(now.agents.len())
                    );
                    ExitCode::SUCCESS
                }
            };
        }
        if std::time::Instant::now() >= deadline || !pid_alive(pid) {
            println!("The running server (pid {pid}) has not reloaded the file yet; `mta agent list` shows when it has.");
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Refuses an edit that would leave a file the host cannot load (so that enabling an agent
/// whose library or parameters are wrong fails here, not in the running host).
fn verify(path: &Path, text: &str, service: Service) -> Result<(), EditError> {
    let parsed = file::parse(path, text.to_string())
        .map_err(|d| EditError::Invalid(crate::agents::diagnostic::render(&d)))?;
    Pipeline::build(&parsed, service, &Libraries::for_command(), None, 1)
        .map(|_| ())
        .map_err(|d| EditError::Invalid(crate::agents::diagnostic::render(&d)))
}

fn refuse_mailbox(service: Service) -> anyhow::Result<()> {
    if service == Service::Mailbox {
        bail!("{}", service.accepted_classes());
    }
    Ok(())
}

fn read_existing(path: &Path) -> anyhow::Result<file::AgentsFile> {
    file::read(path).map_err(|d| anyhow::anyhow!(crate::agents::diagnostic::render(&d)))
}

fn edit_entry(
    config: &HostConfig,
    service: Service,
    name: &str,
    change: impl FnOnce(&file::AgentsFile, &file::AgentEntry) -> Result<String, EditError>,
) -> anyhow::Result<()> {
    refuse_mailbox(service)?;
    let path = agents_file_for(config, service);
    let parsed = read_existing(&path)?;
    let (_, entry) = edit::find(&parsed, name)?;
    let text = change(&parsed, entry)?;
    edit::commit(&path, text)?;
    Ok(())
}

/// `install --canary PERCENT [--canary-name NAME]`.
struct CanaryOf {
    percent: u32,
    name: Option<String>,
}

/// `promote` (the canary replaces the agent's entry) or `rollback` (the canary entry goes).
fn edit_canary(
    config: &HostConfig,
    service: Service,
    name: &str,
    promote: bool,
) -> anyhow::Result<()> {
    refuse_mailbox(service)?;
    let path = agents_file_for(config, service);
    let parsed = read_existing(&path)?;
    let (current, canary) = edit::find_canary(&parsed, name)?;
    let text = if promote {
        let text = edit::promote(&parsed, current, canary);
        verify(&parsed.path, &text, service)?;
        text
    } else {
        edit::remove(&parsed, canary)
    };
    edit::commit(&path, text)?;
    let (current, canary) = (&current.name.value, &canary.name.value);
    if promote {
        println!("Promoted canary {canary:?}: agent {current:?} now runs its library for every new session or mail item in the {service} service.");
    } else {
        println!("Rolled back canary {canary:?}: agent {current:?} serves every new session or mail item in the {service} service again.");
    }
    Ok(())
}

fn parse_parameter(value: &str) -> Result<(String, String), String> {
    value
        .split_once('=')
        .map(|(n, v)| (n.trim().to_string(), v.to_string()))
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("{value:?} is not NAME=VALUE"))
}

/// How `install` writes: not at all (`--dry-run`), and the entry enabled or not (`--enable`).
#[derive(Clone, Copy, Debug)]
struct Mode {
    dry_run: bool,
    enable: bool,
}

#[allow(clippy::too_many_arguments)] // the command's options, passed through as they are
fn install(
    config: &HostConfig,
    service: Service,
    name: &str,
    factory: &str,
    assembly: &Path,
    parameters: &[(String, String)],
    Mode { dry_run, enable }: Mode,
    canary: Option<CanaryOf>,
) -> anyhow::Result<()> {
    refuse_mailbox(service)?;
    let path = agents_file_for(config, service);
    let parsed = if path.exists() {
        read_existing(&path)?
    } else {
        file::parse(&path, edit::EMPTY_FILE.to_string())
            .map_err(|d| anyhow::anyhow!(crate::agents::diagnostic::render(&d)))?
    };
    // A canary goes beside an installed agent (`name`), under a name of its own.
    let current = match &canary {
        Some(_) => Some(edit::find(&parsed, name)?.1),
        None => None,
    };
    let entry_name = match (&canary, current) {
        (Some(c), Some(current)) => c
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.canary", current.name.value)),
        _ => name.to_string(),
    };
    if edit::find(&parsed, &entry_name).is_ok() {
        return Err(EditError::NameTaken(entry_name).into());
    }
    let name = entry_name.as_str();
    let assembly = std::path::absolute(assembly).context("resolving --assembly")?;
    let libraries = Libraries::for_command();
    let library = libraries
        .load(&assembly)
        .map_err(|e| anyhow::anyhow!("agent {name:?}: {e}"))?;
    if dry_run {
        describe_library(&library);
    }
    let Some(info) = library.factories.iter().find(|f| f.name == factory) else {
        let names: Vec<_> = library
            .factories
            .iter()
            .map(|f| format!("{:?} ({})", f.name, f.class))
            .collect();
        bail!(
            "library {} has no factory named {factory:?}; it exports: {}",
            assembly.display(),
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        );
    };
    if !service.accepts(info.class) {
        bail!(
            "factory {factory:?} creates a {}: {}",
            info.class,
            service.accepted_classes()
        );
    }
    if info.class == AgentClass::Delivery {
        if info.delivery_protocol.trim().is_empty() {
            bail!("factory {factory:?} is a delivery agent without a delivery protocol");
        }
        for other in parsed.agents.iter().filter(|e| {
            e.class.value == AgentClass::Delivery
                && e.canary.is_none()
                && !current.is_some_and(|c| std::ptr::eq(c, *e))
        }) {
            let Ok(lib) = libraries.load(&other.assembly) else {
                continue;
            };
            if let Some(f) = lib.factories.iter().find(|f| f.name == other.factory.value) {
                if f.delivery_protocol
                    .eq_ignore_ascii_case(&info.delivery_protocol)
                {
                    bail!(
                        "delivery protocol {:?} is already claimed by agent {:?}",
                        info.delivery_protocol,
                        other.name.value
                    );
                }
            }
        }
    }
    if service == Service::FrontEnd && info.events.contains(Event::OnEndOfData) {
        eprintln!(
            "warning: agent {name:?} handles OnEndOfData, which the Front End service never raises; it will run for its other events"
        );
    }
    if let Err(message) = info.instantiate(parameters) {
        bail!("agent {name:?} refuses these parameters: {message}");
    }
    let entry = match (&canary, current) {
        (Some(c), Some(current)) => {
            if current.class.value != info.class {
                bail!(
                    "factory {factory:?} creates a {}, but agent {:?} is a {}; a canary is of the same class",
                    info.class,
                    current.name.value,
                    current.class.value
                );
            }
            edit::canary_entry_xml(
                name,
                info.class,
                factory,
                &assembly.display().to_string(),
                parameters,
                &current.name.value,
                c.percent,
                current.enabled.value,
            )
        }
        // entry_xml escapes every value, so this attribute text occurs once, as the attribute.
        _ if enable => edit::entry_xml(
            name,
            info.class,
            factory,
            &assembly.display().to_string(),
            parameters,
        )
        .replacen(" enabled=\"false\"", " enabled=\"true\"", 1),
        _ => edit::entry_xml(
            name,
            info.class,
            factory,
            &assembly.display().to_string(),
            parameters,
        ),
    };
    let text = edit::append(&parsed, &entry)?;
    if let (Some(c), Some(current)) = (&canary, current) {
        verify(&path, &text, service)?;
        if dry_run {
            println!("Would install canary {name:?} of agent {:?} in {}, serving {}% of new sessions or mail items.\nDry run: no file was changed.", current.name.value, path.display(), c.percent);
            return Ok(());
        }
        edit::commit(&path, text)?;
        println!(
            "Installed canary {name:?} of agent {:?} ({}, factory {factory:?}) in {}: it serves {}% of new sessions or mail items{}. Promote it with `mta agent promote {:?}`, remove it with `mta agent rollback {:?}`.",
            current.name.value,
            info.class,
            path.display(),
            c.percent,
            if current.enabled.value { "" } else { " once the agent is enabled" },
            current.name.value,
            current.name.value,
        );
        return Ok(());
    }
    if enable {
        verify(&path, &text, service)?;
    }
    let state = if enable { "enabled" } else { "disabled" };
    if dry_run {
        println!(
            "Would install agent {name:?} ({}, factory {factory:?}) in {} as {state}.\nDry run: no file was changed.",
            info.class,
            path.display()
        );
        return Ok(());
    }
    edit::commit(&path, text)?;
    if enable {
        println!(
            "Installed agent {name:?} ({}, factory {factory:?}) in {} as enabled.",
            info.class,
            path.display()
        );
        return Ok(());
    }
    println!(
        "Installed agent {name:?} ({}, factory {factory:?}) in {} as disabled; enable it with `mta agent enable {name:?}{}`.",
        info.class,
        path.display(),
        if service == Service::FrontEnd { " --service frontend" } else { "" }
    );
    Ok(())
}

/// `mta agent install --dry-run LIBRARY`: what the library is and whether this host loads it.
fn dry_run_library(assembly: &Path) -> anyhow::Result<()> {
    let assembly = std::path::absolute(assembly).context("resolving the library's path")?;
    let library = Libraries::for_command().load(&assembly)?;
    describe_library(&library);
    println!("Dry run: no file was changed.");
    Ok(())
}

/// The library's SDK version against the host's, then one line per factory.
fn describe_library(library: &crate::agents::library::Library) {
    println!("Library {}", library.path.display());
    println!(
        "  SDK: built against mta-agent-sdk {}; this host uses {}: compatible",
        library.sdk_version,
        mta_agent_sdk::version::SDK_VERSION
    );
    if library.factories.is_empty() {
        println!("  Factories: none");
        return;
    }
    println!("  Factories:");
    for f in &library.factories {
        let events: Vec<_> = f.events.iter().map(|e| e.name()).collect();
        let protocol = if f.delivery_protocol.is_empty() {
            String::new()
        } else {
            format!(" (delivery protocol {})", f.delivery_protocol)
        };
        println!(
            "    {:<28} {}{protocol}: {}",
            f.name,
            f.class,
            if events.is_empty() {
                "no events".to_string()
            } else {
                events.join(", ")
            }
        );
    }
}

fn services(only: Option<Service>) -> Vec<Service> {
    match only {
        Some(s) => vec![s],
        None => vec![Service::FrontEnd, Service::Transport],
    }
}

fn list(config: &HostConfig, only: Option<Service>) -> anyhow::Result<()> {
    for service in services(only) {
        refuse_mailbox(service)?;
        let path = agents_file_for(config, service);
        if !path.exists() {
            println!("{service}: no agents file ({})", path.display());
            continue;
        }
        let running =
            status::read(&config.agents_status_path(service)).filter(|s| pid_alive(s.pid));
        // A file that does not parse still lets the operator see what is running.
        let parsed = match file::read(&path) {
            Ok(parsed) => parsed,
            Err(diagnostics) => {
                if let Some(s) = &running {
                    println!("{service}: running pipeline generation {} (the file below does not parse, so the running pipeline stays)", s.generation);
                    for a in &s.agents {
                        println!(
                            "  {:<8} {:<24} {:<17} loaded from {}",
                            a.priority, a.name, a.class, a.library
                        );
                    }
                }
                anyhow::bail!("{}", crate::agents::diagnostic::render(&diagnostics));
            }
        };
        println!(
            "{service}: {}{}",
            path.display(),
            match &running {
                Some(s) => format!(" (running, pipeline generation {})", s.generation),
                None => " (not running)".to_string(),
            }
        );
        println!(
            "  {:<8} {:<24} {:<17} {:<7} {:<10} LIBRARY",
            "PRIORITY", "NAME", "CLASS", "ENABLED", "LOADED"
        );
        for (i, entry) in parsed.agents.iter().enumerate() {
            let quarantined = running.as_ref().is_some_and(|s| {
                s.quarantined
                    .iter()
                    .any(|q| q.name.eq_ignore_ascii_case(&entry.name.value))
            });
            let loaded = running
                .as_ref()
                .and_then(|s| {
                    s.agents
                        .iter()
                        .find(|a| a.name.eq_ignore_ascii_case(&entry.name.value))
                })
                .map(|a| format!("gen {}", s_gen(running.as_ref(), a)))
                .unwrap_or_else(|| {
                    let rolled_back = running.as_ref().is_some_and(|s| {
                        s.rolled_back
                            .iter()
                            .any(|r| r.name.eq_ignore_ascii_case(&entry.name.value))
                    });
                    if quarantined {
                        "quarantined".into()
                    } else if rolled_back {
                        "rolled back".into()
                    } else {
                        "-".into()
                    }
                });
            println!(
                "  {:<8} {:<24} {:<17} {:<7} {:<10} {}",
                i + 1,
                entry.name.value,
                entry.class.value.short_name(),
                entry.enabled.value,
                loaded,
                entry.assembly.display()
            );
        }
        for a in running.iter().flat_map(|s| &s.agents) {
            if let (Some(of), Some(percent)) = (&a.canary_of, a.canary_percent) {
                println!(
                    "  canary: {} serves {percent}% of new sessions or mail items beside {of} ({} calls, {} faults, {} too slow)",
                    a.name, a.calls, a.faults, a.too_slow
                );
            }
        }
        for r in running.iter().flat_map(|s| &s.rolled_back) {
            println!(
                "  rolled back: canary {} of {} ({}); left out until its library or its entry changes",
                r.name, r.canary_of, r.reason
            );
        }
        for q in running.iter().flat_map(|s| &s.quarantined) {
            println!(
                "  quarantined: {} ({}); left out until its library or its entry changes",
                q.name, q.reason
            );
        }
        if let Some(error) = running.as_ref().and_then(|s| s.last_error.as_ref()) {
            println!(
                "  last reload failed; still running generation {}:",
                running.as_ref().map_or(0, |s| s.generation)
            );
            for line in error.lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

fn agents(n: usize) -> String {
    format!("{n} agent{}", if n == 1 { "" } else { "s" })
}

fn s_gen(running: Option<&status::Status>, agent: &status::AgentStatus) -> String {
    format!(
        "{} (library #{})",
        running.map_or(0, |s| s.generation),
        agent.library_generation
    )
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn pipeline(config: &HostConfig, only: Option<Service>) -> anyhow::Result<()> {
    let libraries = Libraries::for_command();
    for service in services(only) {
        refuse_mailbox(service)?;
        let path = agents_file_for(config, service);
        if !path.exists() {
            println!("{service}: no agents file ({})", path.display());
            continue;
        }
        let parsed = read_existing(&path)?;
        let pipeline = Pipeline::build(&parsed, service, &libraries, None, 1)
            .map_err(|d| anyhow::anyhow!(crate::agents::diagnostic::render(&d)))?;
        println!("{service} ({}):", path.display());
        let mut any = false;
        for event in Event::ALL.into_iter().filter(|e| service.raises(*e)) {
            let agents: Vec<String> = pipeline
                .agents_for(event)
                .map(|(_, a)| format!("{}. {}", a.priority, a.name))
                .collect();
            if !agents.is_empty() {
                any = true;
                println!("  {:<24} {}", event.name(), agents.join(", "));
            }
        }
        if !any {
            println!("  (no enabled agent handles any event)");
        }
        for warning in &pipeline.warnings {
            println!("  warning: {warning}");
        }
    }
    Ok(())
}
