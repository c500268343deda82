//! Canary rollout: a new library or version of an agent serves a share of new sessions or mail
//! items beside the current one (an entry with `canaryOf` and `canary`, see [`super::file`]), and
//! is rolled back automatically when it faults or times out more than the current one.
//!
//! The choice of agent is made once per session, mail item or delivery connection
//! ([`super::pipeline::Pipeline::choose_canaries`]); the judgement reads the per-factory counters
//! every call already updates, once a second on the reload controller's thread, so an agent call
//! pays nothing for it. A rolled-back canary is left out of new pipelines like a quarantined
//! agent, until its library or its entry changes.

use super::pipeline::{Factory, Pipeline};
use super::status::RolledBack;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// The rules and the rolled-back canaries of one service.
pub struct Canaries {
    rules: Mutex<Rules>,
    /// By factory key.
    rolled_back: Mutex<HashMap<String, RolledBack>>,
}

#[derive(Clone, Copy)]
struct Rules {
    margin_percent: f64,
    min_calls: u64,
}

impl Default for Canaries {
    fn default() -> Self {
        let defaults = crate::config::AgentsConfig::default();
        Self {
            rules: Mutex::new(Rules {
                margin_percent: defaults.canary_margin_percent,
                min_calls: defaults.canary_min_calls,
            }),
            rolled_back: Mutex::default(),
        }
    }
}

/// Calls that faulted or ran over the time limit, in percent of all calls. A hung call is
/// counted both as a fault and as too slow, so it is taken once.
pub fn bad_rate(factory: &Factory) -> (u64, f64) {
    let calls = factory.calls.load(Ordering::Relaxed);
    let bad = (factory.faults.load(Ordering::Relaxed) + factory.too_slow.load(Ordering::Relaxed))
        .saturating_sub(factory.hung.load(Ordering::Relaxed))
        .min(calls);
    let rate = if calls == 0 {
        0.0
    } else {
        bad as f64 * 100.0 / calls as f64
    };
    (calls, rate)
}

impl Canaries {
    /// Sets the margin (percentage points) and the calls needed before judging.
    pub fn set_rules(&self, margin_percent: f64, min_calls: u64) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = Rules {
            margin_percent,
            min_calls,
        };
    }

    /// The factory keys to leave out of new pipelines.
    pub fn rolled_back_keys(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }

    /// The rolled-back canaries, for the status file.
    pub fn rolled_back(&self) -> Vec<RolledBack> {
        let mut out: Vec<RolledBack> = self.lock().values().cloned().collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// A new pipeline is serving: forgets the canaries whose entry or library changed (they
    /// are in the pipeline again, or gone), and publishes the shares of its canaries (0 for
    /// those of `previous` it no longer has, promoted or removed).
    pub fn swapped(&self, previous: Option<&Pipeline>, pipeline: &Pipeline) {
        self.lock()
            .retain(|key, _| pipeline.quarantined.iter().any(|(_, k)| k == key));
        let metrics = &crate::metrics::global().agents;
        for gone in previous
            .into_iter()
            .flat_map(|p| {
                p.canaries
                    .iter()
                    .map(move |pair| &p.agents[pair.canary].name)
            })
            .filter(|name| {
                !pipeline
                    .canaries
                    .iter()
                    .any(|pair| &pipeline.agents[pair.canary].name == *name)
            })
        {
            metrics.canary_share(pipeline.service, gone, 0);
        }
        for pair in &pipeline.canaries {
            metrics.canary_share(
                pipeline.service,
                &pipeline.agents[pair.canary].name,
                pair.percent,
            );
        }
    }

    /// Judges the canaries of `pipeline`; true when one was rolled back (a reload is due).
    pub fn judge(&self, pipeline: &Pipeline) -> bool {
        if pipeline.canaries.is_empty() {
            return false;
        }
        let rules = *self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let mut any = false;
        for pair in &pipeline.canaries {
            let (canary, current) = (
                &pipeline.agents[pair.canary],
                &pipeline.agents[pair.current],
            );
            let (calls, rate) = bad_rate(&canary.factory);
            if calls < rules.min_calls.max(1) {
                continue;
            }
            let (current_calls, current_rate) = bad_rate(&current.factory);
            if rate <= current_rate + rules.margin_percent {
                continue;
            }
            let key = canary.factory.key().to_string();
            let mut rolled_back = self.lock();
            if rolled_back.contains_key(&key) {
                continue;
            }
            let reason = format!(
                "fault-or-timeout rate {rate:.1}% over {calls} calls against {current_rate:.1}% over {current_calls} calls for {:?}; margin {} points",
                current.name, rules.margin_percent
            );
            tracing::warn!(
                message = "Canary rolled back: left out of new pipelines; its current agent serves every new session or mail item.",
                service = %pipeline.service,
                agent = %canary.name,
                canary_of = %current.name,
                canary_rate_percent = rate,
                canary_calls = calls,
                current_rate_percent = current_rate,
                current_calls,
                margin_percent = rules.margin_percent,
            );
            crate::metrics::global()
                .agents
                .canary_rolled_back(pipeline.service, &canary.name);
            rolled_back.insert(
                key,
                RolledBack {
                    name: canary.name.clone(),
                    canary_of: current.name.clone(),
                    reason,
                },
            );
            any = true;
        }
        any
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RolledBack>> {
        self.rolled_back.lock().unwrap_or_else(|e| e.into_inner())
    }
}
