//! Live reload: one controller per process rebuilds a service's pipeline when its agents file or
//! one of its libraries changes, and swaps it in whole, or keeps the running one on any error.
//!
//! Triggers (file watcher, SIGHUP, a management command's edit, which the watcher sees) arrive on
//! one channel. The watcher watches the *directories* of the files and libraries, because a
//! rebuild or an atomic edit replaces the inode; events are debounced so that a build writing a
//! library in several steps causes one reload.

use crate::agents::diagnostic::{render, Diagnostic};
use crate::agents::file;
use crate::agents::library::Libraries;
use crate::agents::pipeline::Pipeline;
use crate::agents::status;
use crate::service::Service;
use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agents of one service: the running snapshot and what is needed to rebuild it.
pub struct AgentHost {
    service: Service,
    file: Option<PathBuf>,
    libraries: Arc<Libraries>,
    current: ArcSwap<Pipeline>,
    generation: AtomicU64,
    status_path: Option<PathBuf>,
    last_error: Mutex<Option<String>>,
    reload_lock: Mutex<()>,
    /// Hung calls after which an agent is quarantined (0: never).
    quarantine_after: u64,
    /// Quarantined entries by factory key: name and reason.
    quarantined: Mutex<HashMap<String, (String, String)>>,
    /// Canary rollout rules and rolled-back canaries ([`super::canary`]).
    canary: super::canary::Canaries,
    /// Set when the process is root and mta.toml does not allow agents as root: the hint to
    /// give. A file with an enabled entry is then refused before any library is opened, at a
    /// reload as at start-up, so an agents file written after start cannot run code as root.
    root_refusal: Option<String>,
    /// Reload attempts so far, whatever their outcome, and the file the last one read (in the
    /// status file).
    reloads: Mutex<status::Reloads>,
}

impl AgentHost {
    /// Builds the first pipeline of `service` from `file` (none: an empty pipeline). An invalid
    /// file is an error here: at start-up it is fatal.
    pub fn start(
        service: Service,
        file: Option<PathBuf>,
        libraries: Arc<Libraries>,
        status_path: Option<PathBuf>,
        quarantine_after: u64,
        root_refusal: Option<String>,
    ) -> Result<Arc<Self>, Vec<Diagnostic>> {
        let pipeline = match &file {
            Some(path) if path.exists() => {
                let parsed = file::read(path)?;
                refuse_as_root(&parsed, root_refusal.as_deref())?;
                Pipeline::build(&parsed, service, &libraries, None, 1)?
            }
            Some(path) => {
                tracing::info!(message = "No agents file yet; watching for it.", service = %service, path = %path.display());
                Pipeline::empty(service)
            }
            None => Pipeline::empty(service),
        };
        log_warnings(&pipeline, None);
        let generation = pipeline.generation;
        let host = Arc::new(Self {
            service,
            file,
            libraries,
            current: ArcSwap::from_pointee(pipeline),
            generation: AtomicU64::new(generation),
            status_path,
            last_error: Mutex::new(None),
            reload_lock: Mutex::new(()),
            quarantine_after,
            quarantined: Mutex::new(HashMap::new()),
            canary: super::canary::Canaries::default(),
            root_refusal,
            reloads: Mutex::new(status::Reloads::default()),
        });
        tracing::info!(
            message = "Agent pipeline loaded.",
            service = %service,
            generation,
            agents = host.pipeline().agents.len(),
        );
        host.canary.swapped(None, &host.pipeline());
        host.write_status();
        Ok(host)
    }

    /// The service.
    pub fn service(&self) -> Service {
        self.service
    }

    /// The running snapshot. A session keeps what this returns until it ends.
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.current.load_full()
    }

    /// The agents file, if the service has one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Rebuilds from the file and swaps. On any error the running snapshot stays and the error
    /// is returned (and logged, and written to the status file).
    pub fn reload(&self) -> Result<u64, Vec<Diagnostic>> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let old = self.pipeline();
        let next = self.generation.load(Ordering::Relaxed) + 1;
        let quarantined: HashSet<String> = self
            .quarantined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let rolled_back = self.canary.rolled_back_keys();
        // The file is read once: its digest (for a command waiting for its edit to be read)
        // is that of the text parsed.
        let mut read_digest = None;
        let built = if path.exists() {
            file::read_text(path).and_then(|text| {
                read_digest = Some(status::file_digest(text.as_bytes()));
                let parsed = file::parse(path, text)?;
                refuse_as_root(&parsed, self.root_refusal.as_deref())?;
                Pipeline::build_excluding(
                    &parsed,
                    self.service,
                    &self.libraries,
                    Some(&old),
                    next,
                    &quarantined,
                    &rolled_back,
                )
            })
        } else {
            // No file: no agents.
            let mut empty = Pipeline::empty(self.service);
            empty.generation = next;
            Ok(empty)
        };
        // Whether this attempt ends a run of failed ones: then the operator is told the pipeline
        // is healthy again, whether the fix was a new pipeline or the running file restored.
        let recovering = self.last_error().is_some();
        // Counted before the outcome is stored; each branch writes the status file, so a
        // command waiting for the count finds the outcome with it.
        {
            let mut reloads = self.reloads.lock().unwrap_or_else(|e| e.into_inner());
            reloads.attempts += 1;
            reloads.file_digest = read_digest;
        }
        match built {
            Ok(pipeline) if pipeline.digest == old.digest => {
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // Written now, not at the next tick, and before the log line, so whoever reads
                // the line finds it up to date (a recovered error cleared).
                self.write_status();
                if recovering {
                    tracing::info!(
                        message = "Agent pipeline recovered.",
                        service = %self.service,
                        generation = old.generation,
                        elapsed_us = started.elapsed().as_micros() as u64,
                    );
                } else {
                    // Info, not debug: an operator who saved a file, touched a library or sent
                    // SIGHUP sees that the host noticed and found nothing to swap.
                    tracing::info!(
                        message = "No change.",
                        service = %self.service,
                        generation = old.generation,
                        elapsed_us = started.elapsed().as_micros() as u64,
                    );
                }
                Ok(old.generation)
            }
            Ok(pipeline) => {
                // An entry or library that changed is no longer quarantined.
                self.quarantined
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|key, _| pipeline.quarantined.iter().any(|(_, k)| k == key));
                self.canary.swapped(Some(&old), &pipeline);
                log_warnings(&pipeline, Some(&old));
                let agents = pipeline.agents.len();
                self.current.store(Arc::new(pipeline));
                self.generation.store(next, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                // Status file first: whoever reads a log line finds the file up to date.
                self.write_status();
                tracing::info!(
                    message = "Agent pipeline swapped.",
                    service = %self.service,
                    generation = next,
                    agents,
                    libraries_loaded = self.libraries.loaded_count(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                );
                if recovering {
                    tracing::info!(
                        message = "Agent pipeline recovered.",
                        service = %self.service,
                        generation = next,
                    );
                }
                Ok(next)
            }
            Err(diagnostics) => {
                let text = render(&diagnostics);
                tracing::error!(
                    message = "Agent pipeline reload failed; the running pipeline keeps serving.",
                    service = %self.service,
                    generation = old.generation,
                    errors = %text,
                );
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
                crate::metrics::global().agents.reload_failed(self.service);
                self.write_status();
                Err(diagnostics)
            }
        }
    }

    /// Files whose change should trigger a reload: the agents file and every library it names,
    /// and, for each of them that is a symlink, the file it resolves to (a library linked to
    /// the output of a build elsewhere is rebuilt there, and the link itself never changes).
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = self.named_files();
        let resolved: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .filter(|real| !files.iter().any(|f| same_file(f, real)))
            .collect();
        files.extend(resolved);
        files
    }

    /// The agents file and every library it names, as written.
    fn named_files(&self) -> Vec<PathBuf> {
        let Some(path) = &self.file else {
            return Vec::new();
        };
        let mut files = vec![path.clone()];
        if let Ok(parsed) = file::read(path) {
            files.extend(parsed.agents.iter().map(|e| e.assembly.clone()));
        } else {
            files.extend(
                self.pipeline()
                    .agents
                    .iter()
                    .map(|a| a.library.path.clone()),
            );
        }
        files
    }

    /// Quarantines the agents with too many hung calls, and swaps in a pipeline without them.
    pub fn check_hung(&self) {
        if self.quarantine_after == 0 {
            return;
        }
        let pipeline = self.pipeline();
        let mut newly = Vec::new();
        {
            let mut quarantined = self.quarantined.lock().unwrap_or_else(|e| e.into_inner());
            for agent in &pipeline.agents {
                let hung = agent.factory.hung.load(Ordering::Relaxed);
                if hung >= self.quarantine_after && !quarantined.contains_key(agent.factory.key()) {
                    let reason = format!(
                        "{hung} calls did not return within twice the time limit of {} ms",
                        pipeline.time_limit.as_millis()
                    );
                    quarantined.insert(
                        agent.factory.key().to_string(),
                        (agent.name.clone(), reason.clone()),
                    );
                    newly.push((agent.name.clone(), reason));
                }
            }
        }
        for (name, reason) in &newly {
            tracing::error!(message = "Agent quarantined: left out of new pipelines until its library or its entry changes.", service = %self.service, agent = %name, reason = %reason);
        }
        if !newly.is_empty() {
            let _ = self.reload();
        }
    }

    /// Sets the canary rollout rules (`[agents] canary_margin_percent`, `canary_min_calls`).
    pub fn set_canary_rules(&self, margin_percent: f64, min_calls: u64) {
        self.canary.set_rules(margin_percent, min_calls);
    }

    /// Rolls back the canaries that fault or time out more than their current agents, and
    /// swaps in a pipeline without them.
    pub fn check_canaries(&self) {
        if self.canary.judge(&self.pipeline()) {
            let _ = self.reload();
        }
    }

    /// The error of the last reload, if it failed (the running pipeline is older).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The quarantined agents: name and reason.
    pub fn quarantined(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .quarantined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// Writes the status file (also called every second by the controller, for the counters).
    pub fn write_status(&self) {
        if let Some(path) = &self.status_path {
            let error = self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Err(e) = status::write(
                path,
                &self.pipeline(),
                error.as_deref(),
                self.libraries.loaded_count(),
                &self.quarantined(),
                &self.canary.rolled_back(),
                &self
                    .reloads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ) {
                tracing::warn!(message = "Could not write the agents status file.", path = %path.display(), error = %e);
            }
        }
    }
}

/// Refuses a file with an enabled entry when `refusal` (the hint) is set: the process is root.
fn refuse_as_root(parsed: &file::AgentsFile, refusal: Option<&str>) -> Result<(), Vec<Diagnostic>> {
    let (Some(hint), Some(entry)) = (refusal, parsed.agents.iter().find(|a| a.enabled.value))
    else {
        return Ok(());
    };
    Err(vec![Diagnostic::new(
        &entry.enabled.at,
        format!(
            "refusing to run agents as root (\"{}\" is enabled): {hint}",
            entry.name.value
        ),
    )])
}

fn log_warnings(pipeline: &Pipeline, previous: Option<&Pipeline>) {
    for warning in &pipeline.warnings {
        if previous.is_some_and(|p| p.warnings.contains(warning)) {
            continue;
        }
        tracing::warn!(message = %warning, service = %pipeline.service);
    }
}

/// What can make the controller reload.
#[derive(Debug)]
pub enum Trigger {
    /// Something changed on disk.
    Paths(Vec<PathBuf>),
    /// Reload everything (SIGHUP).
    All,
    /// Stop the controller.
    Stop,
}

/// The running reload controller; dropping it stops watching.
pub struct ReloadController {
    sender: mpsc::Sender<Trigger>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReloadController {
    /// Starts watching the files and libraries of `hosts`, reloading after `debounce` of quiet
    /// on them.
    pub fn start(hosts: Vec<Arc<AgentHost>>, debounce: Duration) -> notify::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Trigger>();
        let events = sender.clone();
        // Only events on the files of interest count: a log written every few ms beside an
        // agents file must neither trigger reloads nor hold one back.
        let interesting: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let filter = Arc::clone(&interesting);
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let wanted = filter.lock().unwrap_or_else(|e| e.into_inner());
            let paths: Vec<PathBuf> = event
                .paths
                .into_iter()
                .filter(|p| wanted.iter().any(|w| same_file(p, w)))
                .collect();
            drop(wanted);
            if !paths.is_empty() {
                let _ = events.send(Trigger::Paths(paths));
            }
        })?;
        let mut control = Control {
            hosts,
            watcher,
            watched_dirs: BTreeSet::new(),
            interesting,
            last_status: Instant::now(),
        };
        control.rewatch();
        let thread = std::thread::Builder::new()
            .name("agent-reload".into())
            .spawn(move || control.run(receiver, debounce))
            .map_err(|e| notify::Error::generic(&e.to_string()))?;
        Ok(Self {
            sender,
            thread: Some(thread),
        })
    }

    /// A sender for other triggers (SIGHUP).
    pub fn trigger(&self) -> mpsc::Sender<Trigger> {
        self.sender.clone()
    }
}

impl Drop for ReloadController {
    fn drop(&mut self) {
        let _ = self.sender.send(Trigger::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often the status files are refreshed with the live counters.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

struct Control {
    hosts: Vec<Arc<AgentHost>>,
    watcher: notify::RecommendedWatcher,
    watched_dirs: BTreeSet<PathBuf>,
    /// The files whose events count, shared with the watcher's callback.
    interesting: Arc<Mutex<Vec<PathBuf>>>,
    last_status: Instant,
}

impl Control {
    /// Every second, whatever else happens: quarantines agents with hung calls, refreshes the
    /// status files.
    fn tick(&mut self) {
        if self.last_status.elapsed() < STATUS_INTERVAL {
            return;
        }
        self.last_status = Instant::now();
        for host in &self.hosts {
            host.check_hung();
            host.check_canaries();
            host.write_status();
        }
    }

    fn run(&mut self, receiver: mpsc::Receiver<Trigger>, debounce: Duration) {
        loop {
            self.tick();
            let first = match receiver.recv_timeout(STATUS_INTERVAL) {
                Ok(trigger) => trigger,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut pending: Vec<PathBuf> = Vec::new();
            let mut all = false;
            let absorb =
                |trigger: Trigger, pending: &mut Vec<PathBuf>, all: &mut bool| match trigger {
                    Trigger::Paths(paths) => {
                        pending.extend(paths);
                        true
                    }
                    Trigger::All => {
                        *all = true;
                        true
                    }
                    Trigger::Stop => false,
                };
            let first_event = Instant::now();
            if !absorb(first, &mut pending, &mut all) {
                return;
            }
            // Debounce: wait until nothing has arrived for `debounce`. A quiet period that
            // restarts on every event, not a deadline counted from the first one: only events on
            // the agents files and their libraries get here (the watcher drops the rest), and a
            // file copied in place sends an event per write, so a deadline could load a library
            // half written. A file replaced at once (an editor's save, a rename, cargo's hard
            // link) sends its events within microseconds, and waits exactly `debounce`.
            loop {
                self.tick();
                match receiver.recv_timeout(debounce) {
                    Ok(trigger) => {
                        if !absorb(trigger, &mut pending, &mut all) {
                            return;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            tracing::debug!(
                message = "Agent files changed; reloading.",
                waited_us = first_event.elapsed().as_micros() as u64,
                all,
                paths = ?pending,
            );
            for host in &self.hosts {
                let watched = host.watched_files();
                let relevant = all
                    || pending
                        .iter()
                        .any(|p| watched.iter().any(|w| same_file(p, w)));
                if relevant {
                    let _ = host.reload();
                }
            }
            self.rewatch();
        }
    }

    /// Watches the directory of every file of interest (a library may have moved).
    fn rewatch(&mut self) {
        let files: Vec<PathBuf> = self
            .hosts
            .iter()
            .flat_map(|h| h.watched_files())
            .map(|f| absolute(&f))
            .collect();
        let wanted: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .filter(|d| d.is_dir())
            .collect();
        *self.interesting.lock().unwrap_or_else(|e| e.into_inner()) = files;
        for gone in self.watched_dirs.difference(&wanted) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.watched_dirs) {
            if let Err(e) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(message = "Cannot watch directory for agent changes.", dir = %dir.display(), error = %e);
            }
        }
        self.watched_dirs = wanted;
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn same_file(event_path: &Path, watched: &Path) -> bool {
    let a = absolute(event_path);
    let b = absolute(watched);
    a == b || normalize(&a) == normalize(&b)
}

/// Removes `.` and resolves `..` lexically (the files may not exist any more).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
