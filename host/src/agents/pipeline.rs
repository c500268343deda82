//! The agent pipeline of one service: an immutable snapshot of its enabled agents in priority
//! order, built aside from an agents file and swapped in whole.
//!
//! Building checks everything that needs the libraries: that each loads and was built against a
//! compatible SDK, exports the named factory, of the class `baseType` says, that the service
//! accepts that class, that no two delivery agents claim one protocol, and that each factory
//! accepts its parameters. A factory whose entry did not change (same name, class, factory,
//! library content and parameters) is carried over from the previous snapshot, not rebuilt.

use crate::agents::diagnostic::Diagnostic;
use crate::agents::file::{AgentEntry, AgentsFile};
use crate::agents::library::{Libraries, Library};
use crate::service::Service;
use mta_agent_sdk::abi::AgentFactoryBox;
use mta_agent_sdk::{AgentClass, Event, EventSet};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A snapshot of a service's agents. Sessions and mail items hold it (an `Arc`) to their end.
#[derive(Debug)]
pub struct Pipeline {
    /// The service it belongs to.
    pub service: Service,
    /// Increases by one with every swap; 0 is the empty pipeline of a service without a file.
    pub generation: u64,
    /// `timeLimitInMilliseconds`.
    pub time_limit: Duration,
    /// The file it was built from.
    pub source: Option<PathBuf>,
    /// `messageSnapshot@enabled`: the dispatcher records each agent's changes
    /// ([`super::snapshot`]). Read once per event, so tracing off costs an agent call nothing.
    pub message_snapshot: bool,
    /// The enabled agents, highest priority first.
    pub agents: Vec<PipelineAgent>,
    /// Per event, the indices in `agents` of the agents that handle it, in priority order.
    by_event: Vec<Vec<usize>>,
    /// Warnings found while building (logged once by the reload controller).
    pub warnings: Vec<String>,
    /// Digest of the file's text and the loaded libraries' contents: equal digests are equal
    /// pipelines, so a reload that changes neither swaps nothing.
    pub digest: u64,
    /// Enabled entries left out because they are quarantined: (name, factory key).
    pub quarantined: Vec<(String, String)>,
}

/// One agent of a pipeline.
#[derive(Debug)]
pub struct PipelineAgent {
    /// `name`.
    pub name: String,
    /// Position in `agentList`, from 1.
    pub priority: usize,
    /// Its class.
    pub class: AgentClass,
    /// The events the host raises to it in this service.
    pub events: EventSet,
    /// The events its code declares.
    pub declared: EventSet,
    /// `classFactory`.
    pub factory_name: String,
    /// For delivery agents, the delivery protocol.
    pub delivery_protocol: String,
    /// The library the factory comes from.
    pub library: Arc<Library>,
    /// The factory.
    pub factory: Arc<Factory>,
    /// Its log lines' way into the host's log (one rate limit for all its instances).
    pub log: Arc<crate::agents::log::AgentLog>,
}

/// A factory built from an entry's parameters, with its counters. Dropping the last reference
/// (when no snapshot uses it any more) closes it.
pub struct Factory {
    inner: AgentFactoryBox,
    key: String,
    /// Calls made into agents of this factory.
    pub calls: AtomicU64,
    /// Calls that faulted (error or panic).
    pub faults: AtomicU64,
    /// Calls over the time limit.
    pub too_slow: AtomicU64,
    /// Calls abandoned past twice the time limit, whose threads are hung.
    pub hung: AtomicU64,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory").field("key", &self.key).finish()
    }
}

impl Factory {
    /// What identifies the factory's entry and library (it changes when either does).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A new agent instance.
    pub fn create_agent(&self) -> Result<mta_agent_sdk::abi::AgentInstanceBox, String> {
        self.inner
            .create_agent()
            .into_result()
            .map_err(|e| e.into_string())
    }

    /// Counts a call and its outcome.
    pub fn record(&self, faulted: bool, slow: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if faulted {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.too_slow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Pipeline {
    /// The pipeline of a service that has no agents file.
    pub fn empty(service: Service) -> Self {
        Self {
            service,
            generation: 0,
            time_limit: Duration::from_secs(300),
            source: None,
            message_snapshot: false,
            agents: Vec::new(),
            by_event: vec![Vec::new(); Event::ALL.len()],
            warnings: Vec::new(),
            digest: 0,
            quarantined: Vec::new(),
        }
    }

    /// The agents that handle `event`, in priority order.
    pub fn agents_for(&self, event: Event) -> impl Iterator<Item = (usize, &PipelineAgent)> {
        self.by_event[event as usize]
            .iter()
            .map(move |&i| (i, &self.agents[i]))
    }

    /// The index in `agents` of the `position`-th agent (in priority order) handling `event`.
    pub fn handler_at(&self, event: Event, position: usize) -> Option<usize> {
        self.by_event[event as usize].get(position).copied()
    }

    /// Whether any agent handles `event` (the host skips the event entirely otherwise).
    pub fn handles(&self, event: Event) -> bool {
        !self.by_event[event as usize].is_empty()
    }

    /// Builds a snapshot from `file` for `service`, reusing unchanged factories of `previous`.
    pub fn build(
        file: &AgentsFile,
        service: Service,
        libraries: &Libraries,
        previous: Option<&Pipeline>,
        generation: u64,
    ) -> Result<Pipeline, Vec<Diagnostic>> {
        Self::build_without(
            file,
            service,
            libraries,
            previous,
            generation,
            &HashSet::new(),
        )
    }

    /// Like [`build`](Self::build), leaving out the entries whose factory key is in
    /// `quarantined` (a changed entry or library has a new key, and is built again).
    pub fn build_without(
        file: &AgentsFile,
        service: Service,
        libraries: &Libraries,
        previous: Option<&Pipeline>,
        generation: u64,
        quarantined: &HashSet<String>,
    ) -> Result<Pipeline, Vec<Diagnostic>> {
        let mut errors = Vec::new();
        if service == Service::Mailbox {
            return Err(vec![Diagnostic::file(
                &file.path,
                format!(
                    "an agents file for the Mailbox Transport service is refused: {}",
                    service.accepted_classes()
                ),
            )]);
        }
        let reusable: HashMap<&str, &Arc<Factory>> = previous
            .map(|p| {
                p.agents
                    .iter()
                    .map(|a| (a.factory.key.as_str(), &a.factory))
                    .collect()
            })
            .unwrap_or_default();
        let mut agents = Vec::new();
        let mut warnings = Vec::new();
        let mut protocols: HashMap<String, &AgentEntry> = HashMap::new();
        let mut left_out = Vec::new();
        for (index, entry) in file.agents.iter().enumerate() {
            if !service.accepts(entry.class.value) {
                errors.push(Diagnostic::new(
                    &entry.class.at,
                    format!(
                        "agent {:?} is a {}: {}",
                        entry.name.value,
                        entry.class.value,
                        service.accepted_classes()
                    ),
                ));
                continue;
            }
            if !entry.enabled.value {
                continue;
            }
            let library = match libraries.load(&entry.assembly) {
                Ok(l) => l,
                Err(e) => {
                    errors.push(Diagnostic::new(
                        &entry.assembly_raw.at,
                        format!("agent {:?}: {e}", entry.name.value),
                    ));
                    continue;
                }
            };
            let Some(info) = library
                .factories
                .iter()
                .find(|f| f.name == entry.factory.value)
            else {
                errors.push(Diagnostic::new(
                    &entry.factory.at,
                    format!(
                        "agent {:?}: library {} has no factory named {:?}; it exports: {}",
                        entry.name.value,
                        entry.assembly.display(),
                        entry.factory.value,
                        exported(&library)
                    ),
                ));
                continue;
            };
            if info.class != entry.class.value {
                errors.push(Diagnostic::new(
                    &entry.class.at,
                    format!(
                        "agent {:?}: factory {:?} creates a {}, but baseType says {}",
                        entry.name.value, info.name, info.class, entry.class.value
                    ),
                ));
                continue;
            }
            if info.class == AgentClass::Delivery {
                if info.delivery_protocol.trim().is_empty() {
                    errors.push(Diagnostic::new(
                        &entry.factory.at,
                        format!(
                            "agent {:?}: a delivery agent must declare a delivery protocol",
                            entry.name.value
                        ),
                    ));
                    continue;
                }
                let protocol = info.delivery_protocol.to_ascii_uppercase();
                if let Some(first) = protocols.get(&protocol) {
                    errors.push(Diagnostic::new(
                        &entry.at.at,
                        format!(
                            "agent {:?} claims delivery protocol {:?}, already claimed by agent {:?} at line {}",
                            entry.name.value, info.delivery_protocol, first.name.value, first.at.at.line
                        ),
                    ));
                    continue;
                }
                protocols.insert(protocol, entry);
            }
            let mut events = EventSet::EMPTY;
            for event in info.events.iter() {
                if service.raises(event) {
                    events = events.with(event);
                } else if event == Event::OnEndOfData && service == Service::FrontEnd {
                    warnings.push(format!(
                        "agent {:?} handles OnEndOfData, which the Front End service never raises; it is loaded for its other events",
                        entry.name.value
                    ));
                }
            }
            let key = factory_key(entry, &library);
            if quarantined.contains(&key) {
                warnings.push(format!(
                    "agent {:?} is quarantined and left out of the pipeline until its library or its entry changes",
                    entry.name.value
                ));
                left_out.push((entry.name.value.clone(), key));
                continue;
            }
            let factory = match reusable.get(key.as_str()) {
                Some(f) => Arc::clone(f),
                None => match info.instantiate(&entry.parameters) {
                    Ok(inner) => Arc::new(Factory {
                        inner,
                        key,
                        calls: AtomicU64::new(0),
                        faults: AtomicU64::new(0),
                        too_slow: AtomicU64::new(0),
                        hung: AtomicU64::new(0),
                    }),
                    Err(message) => {
                        errors.push(Diagnostic::new(
                            &entry.at.at,
                            format!(
                                "agent {:?} refused its parameters: {message}",
                                entry.name.value
                            ),
                        ));
                        continue;
                    }
                },
            };
            agents.push(PipelineAgent {
                name: entry.name.value.clone(),
                priority: index + 1,
                class: info.class,
                events,
                declared: info.events,
                factory_name: info.name.clone(),
                delivery_protocol: info.delivery_protocol.clone(),
                log: Arc::new(crate::agents::log::AgentLog::new(
                    &entry.name.value,
                    service,
                )),
                library,
                factory,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let by_event = Event::ALL
            .iter()
            .map(|&event| {
                agents
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.events.contains(event))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let digest = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            file.text.hash(&mut h);
            for a in &agents {
                a.library.fingerprint.hash(&mut h);
            }
            left_out.hash(&mut h);
            h.finish()
        };
        Ok(Pipeline {
            digest,
            service,
            generation,
            time_limit: file.time_limit,
            source: Some(file.path.clone()),
            message_snapshot: file.message_snapshot,
            agents,
            by_event,
            warnings,
            quarantined: left_out,
        })
    }
}

/// What identifies an entry's factory: rebuilt only when this changes.
fn factory_key(entry: &AgentEntry, library: &Library) -> String {
    let params: Vec<String> = entry
        .parameters
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    format!(
        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{:016x}\u{0}{}",
        entry.name.value.to_lowercase(),
        entry.class.value,
        entry.factory.value,
        library.path.display(),
        library.fingerprint,
        params.join("\u{1}")
    )
}

fn exported(library: &Library) -> String {
    if library.factories.is_empty() {
        return "nothing".into();
    }
    library
        .factories
        .iter()
        .map(|f| format!("{:?} ({})", f.name, f.class))
        .collect::<Vec<_>>()
        .join(", ")
}
