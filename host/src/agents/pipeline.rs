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
    /// Enabled entries left out because they are quarantined or their canary was rolled back:
    /// (name, factory key).
    pub quarantined: Vec<(String, String)>,
    /// Agents served beside a canary, each to its share of new sessions or mail items.
    pub canaries: Vec<CanaryPair>,
}

/// An agent and its canary in one pipeline. Which of the two a session, mail item or delivery
/// connection gets is chosen once, when its [`AgentSet`](super::dispatch::AgentSet) is made.
#[derive(Debug)]
pub struct CanaryPair {
    /// Index in `agents` of the current agent.
    pub current: usize,
    /// Index in `agents` of its canary.
    pub canary: usize,
    /// The canary's share of new sets, in percent.
    pub percent: u32,
    /// Sets made so far from this pipeline: the n-th gets the canary when the running total
    /// `n * percent / 100` steps up, which spreads the share evenly (50: every other one).
    made: AtomicU64,
}

impl CanaryPair {
    /// Whether the next set gets the canary.
    fn next_is_canary(&self) -> bool {
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let p = u64::from(self.percent);
        (n + 1) * p / 100 > n * p / 100
    }
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
    /// Its metrics handles, per event (made here, once per build, so a call only counts).
    pub metrics: crate::metrics::AgentCalls,
    /// For a canary, the name of the agent it is a canary of, and its share in percent.
    pub canary_of: Option<(String, u32)>,
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
            canaries: Vec::new(),
        }
    }

    /// For a new session, mail item or delivery connection: the agents it does *not* get, one
    /// of each canary pair (`None` when the pipeline has no canary, the common case).
    /// Only the pairs of `class` count a new set: a mail item's routing agents do not take a
    /// turn from the SMTP sessions' share.
    pub fn choose_canaries(&self, class: AgentClass) -> Option<Box<[bool]>> {
        if self.canaries.is_empty() {
            return None;
        }
        let mut skip = vec![false; self.agents.len()].into_boxed_slice();
        for pair in &self.canaries {
            if self.agents[pair.current].class != class {
                continue;
            }
            if pair.next_is_canary() {
                skip[pair.current] = true;
            } else {
                skip[pair.canary] = true;
            }
        }
        Some(skip)
    }

    /// The other agent of `index`'s canary pair, if it has one.
    pub fn canary_partner(&self, index: usize) -> Option<usize> {
        self.canaries.iter().find_map(|p| {
            if p.current == index {
                Some(p.canary)
            } else if p.canary == index {
                Some(p.current)
            } else {
                None
            }
        })
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
        Self::build_excluding(
            file,
            service,
            libraries,
            previous,
            generation,
            &HashSet::new(),
            &HashSet::new(),
        )
    }

    /// Like [`build`](Self::build), leaving out the entries whose factory key is in
    /// `quarantined` (a changed entry or library has a new key, and is built again) and the
    /// canaries whose factory key is in `rolled_back` (their current agent then serves every
    /// new session again).
    pub fn build_excluding(
        file: &AgentsFile,
        service: Service,
        libraries: &Libraries,
        previous: Option<&Pipeline>,
        generation: u64,
        quarantined: &HashSet<String>,
        rolled_back: &HashSet<String>,
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
                // A canary shares its current agent's protocol: it serves some of its connections.
                if entry.canary.is_some() {
                    // (checked below, once the current agent is known)
                } else if let Some(first) = protocols.get(&protocol) {
                    errors.push(Diagnostic::new(
                        &entry.at.at,
                        format!(
                            "agent {:?} claims delivery protocol {:?}, already claimed by agent {:?} at line {}",
                            entry.name.value, info.delivery_protocol, first.name.value, first.at.at.line
                        ),
                    ));
                    continue;
                } else {
                    protocols.insert(protocol, entry);
                }
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
            if rolled_back.contains(&key) {
                warnings.push(format!(
                    "canary {:?} was rolled back and is left out of the pipeline until its library or its entry changes",
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
                metrics: crate::metrics::AgentCalls::new(service, &entry.name.value, events),
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
                canary_of: entry
                    .canary
                    .as_ref()
                    .map(|c| (c.of.value.clone(), c.percent.value)),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // A canary serves beside its current agent only: without it (disabled, quarantined)
        // there is no share to take from, and the canary waits.
        let mut dropped = Vec::new();
        agents.retain(|a| {
            let Some((of, _)) = &a.canary_of else {
                return true;
            };
            let beside = agents_named(&file.agents, of).is_some_and(|current| {
                current.enabled.value && !left_out.iter().any(|(n, _)| n == &current.name.value)
            });
            if !beside {
                dropped.push(format!(
                    "canary {:?} is left out: the agent it is a canary of, {of:?}, is not in the pipeline",
                    a.name
                ));
            }
            beside
        });
        warnings.extend(dropped);
        for a in agents.iter().filter(|a| a.canary_of.is_some()) {
            if a.class == AgentClass::Delivery {
                let current = agents
                    .iter()
                    .find(|c| Some(&c.name) == a.canary_of.as_ref().map(|(of, _)| of));
                if current.is_some_and(|c| {
                    !c.delivery_protocol
                        .eq_ignore_ascii_case(&a.delivery_protocol)
                }) {
                    errors.push(Diagnostic::file(
                        &file.path,
                        format!(
                            "canary {:?} delivers {:?}, its current agent another protocol; a delivery canary serves its current agent's connections",
                            a.name, a.delivery_protocol
                        ),
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // A canary takes its agent's place in the order: whichever of the two a session gets
        // runs at the agent's priority.
        let mut ordered: Vec<PipelineAgent> = Vec::with_capacity(agents.len());
        let (mut canaries_of, others): (Vec<_>, Vec<_>) =
            agents.into_iter().partition(|a| a.canary_of.is_some());
        for agent in others {
            let name = agent.name.clone();
            let priority = agent.priority;
            ordered.push(agent);
            if let Some(i) = canaries_of.iter().position(|c| {
                c.canary_of
                    .as_ref()
                    .is_some_and(|(of, _)| of.eq_ignore_ascii_case(&name))
            }) {
                let mut canary = canaries_of.swap_remove(i);
                canary.priority = priority;
                ordered.push(canary);
            }
        }
        let agents = ordered;
        let canaries = agents
            .iter()
            .enumerate()
            .filter_map(|(canary, a)| {
                let (of, percent) = a.canary_of.as_ref()?;
                let current = agents
                    .iter()
                    .position(|c| c.name.eq_ignore_ascii_case(of))?;
                Some(CanaryPair {
                    current,
                    canary,
                    percent: *percent,
                    made: AtomicU64::new(0),
                })
            })
            .collect();
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
            canaries,
        })
    }
}

fn agents_named<'a>(entries: &'a [AgentEntry], name: &str) -> Option<&'a AgentEntry> {
    entries
        .iter()
        .find(|e| e.name.value.eq_ignore_ascii_case(name))
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
