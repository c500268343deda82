//! The status file a running host writes after every reload attempt, so that `mta agent list`
//! (another process) can show what is loaded: `<data_dir>/run/agents-<service>.json`. It is also
//! rewritten every second while the host runs, so its call, fault and too-slow counters are live.

use crate::agents::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::Ordering;

/// What a running host has loaded for one service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    /// The service.
    pub service: String,
    /// The host's process id.
    pub pid: u32,
    /// The generation of the running pipeline.
    pub generation: u64,
    /// The error of the last reload, if it failed (the running pipeline is older).
    pub last_error: Option<String>,
    /// Reload attempts so far, whatever their outcome: a command that edited the agents file
    /// waits for this to grow, then reports what the running host made of its edit. `None`
    /// from a host of an older release, which does not count them: nothing to wait for.
    #[serde(default)]
    pub reload_attempts: Option<u64>,
    /// The digest ([`file_digest`]) of the agents file the last reload attempt read: a
    /// command knows the attempt read its edit, not an older text.
    #[serde(default)]
    pub file_digest: Option<String>,
    /// How many library images the process has loaded (never unloaded).
    pub libraries_loaded: u64,
    /// The agents of the running pipeline, in priority order.
    pub agents: Vec<AgentStatus>,
    /// Agents left out of the pipeline because they hung: name and reason.
    #[serde(default)]
    pub quarantined: Vec<Quarantined>,
    /// Canaries rolled back for faulting or timing out more than their current agent.
    #[serde(default)]
    pub rolled_back: Vec<RolledBack>,
}

/// A canary rolled back automatically.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolledBack {
    /// The canary's name.
    pub name: String,
    /// The agent it is a canary of.
    pub canary_of: String,
    /// Why: both rates and the margin.
    pub reason: String,
}

/// A quarantined agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Quarantined {
    /// Name.
    pub name: String,
    /// Why.
    pub reason: String,
}

/// One loaded agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    /// Name.
    pub name: String,
    /// Class.
    pub class: String,
    /// Priority.
    pub priority: usize,
    /// Library path.
    pub library: String,
    /// Load number of the library image.
    pub library_generation: u64,
    /// SDK version the library was built with.
    pub sdk_version: String,
    /// Events raised to it.
    pub events: Vec<String>,
    /// Calls so far.
    pub calls: u64,
    /// Faults so far.
    pub faults: u64,
    /// Calls over the time limit so far.
    pub too_slow: u64,
    /// Calls abandoned past twice the time limit (their threads hung).
    #[serde(default)]
    pub hung: u64,
    /// For a canary, the agent it is a canary of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_of: Option<String>,
    /// For a canary, its share of new sessions or mail items, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u32>,
}

/// Writes the status atomically (temporary file, then rename).
pub fn write(
    path: &Path,
    pipeline: &Pipeline,
    last_error: Option<&str>,
    libraries_loaded: u64,
    quarantined: &[(String, String)],
    rolled_back: &[RolledBack],
    reloads: &Reloads,
) -> std::io::Result<()> {
    let status = Status {
        service: pipeline.service.to_string(),
        pid: std::process::id(),
        generation: pipeline.generation,
        last_error: last_error.map(str::to_string),
        reload_attempts: Some(reloads.attempts),
        file_digest: reloads.file_digest.clone(),
        libraries_loaded,
        agents: pipeline
            .agents
            .iter()
            .map(|a| AgentStatus {
                name: a.name.clone(),
                class: a.class.to_string(),
                priority: a.priority,
                library: a.library.path.display().to_string(),
                library_generation: a.library.generation,
                sdk_version: a.library.sdk_version.clone(),
                events: a.events.iter().map(|e| e.name().to_string()).collect(),
                calls: a.factory.calls.load(Ordering::Relaxed),
                faults: a.factory.faults.load(Ordering::Relaxed),
                too_slow: a.factory.too_slow.load(Ordering::Relaxed),
                hung: a.factory.hung.load(Ordering::Relaxed),
                canary_of: a.canary_of.as_ref().map(|(of, _)| of.clone()),
                canary_percent: a.canary_of.as_ref().map(|(_, p)| *p),
            })
            .collect(),
        quarantined: quarantined
            .iter()
            .map(|(name, reason)| Quarantined {
                name: name.clone(),
                reason: reason.clone(),
            })
            .collect(),
        rolled_back: rolled_back.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&status).map_err(std::io::Error::other)?;
    crate::fsutil::replace(path, &json)
}

/// The reload attempts of a host, for the status file.
#[derive(Clone, Debug, Default)]
pub struct Reloads {
    /// Attempts so far.
    pub attempts: u64,
    /// The digest of the file the last attempt read.
    pub file_digest: Option<String>,
}

/// A digest of an agents file's bytes, the same in the server and in a command (the same
/// binary).
pub fn file_digest(bytes: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Reads a status file; `None` when absent or unreadable.
pub fn read(path: &Path) -> Option<Status> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file of a host from before reloads were counted still reads, and says so.
    #[test]
    fn a_status_file_without_reload_counts_reads_as_an_older_host() {
        let old = r#"{"service":"transport","pid":1,"generation":2,"last_error":null,"libraries_loaded":1,"agents":[]}"#;
        let status: Status = serde_json::from_str(old).unwrap();
        assert_eq!(status.reload_attempts, None);
        assert_eq!(status.file_digest, None);
        assert_eq!(status.generation, 2);
    }

    #[test]
    fn the_file_digest_depends_on_every_byte() {
        assert_eq!(file_digest(b"<a/>"), file_digest(b"<a/>"));
        assert_ne!(file_digest(b"<a/>"), file_digest(b"<a />"));
        assert_eq!(file_digest(b"").len(), 16);
    }
}
