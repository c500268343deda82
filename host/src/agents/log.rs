//! Agents' log lines: the host side of the SDK's `Logger`.
//!
//! Each agent of a pipeline has one [`AgentLog`]: its name and service, and a token
//! bucket shared by all its instances. An agent's line becomes a `tracing` event of this module
//! with `agent`, `service` and `event` fields, at the level the agent chose (so the host's log
//! filter applies to it as to the host's own lines). Past the bucket, lines are dropped and
//! counted; the count is written as one "suppressed" line when the agent may log again, or at
//! the end of its call, at most once per [`REPORT_EVERY`]. An agent in a loop therefore costs the
//! log [`BURST`] lines, then [`PER_SECOND`] a second, plus one line a second saying how many
//! were dropped.

use crate::service::Service;
use abi_stable::std_types::RStr;
use mta_agent_sdk::abi::{LogLevel, LogSink};
use mta_agent_sdk::Event;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines an agent may write at once.
pub const BURST: f64 = 100.0;
/// Lines an agent may write per second, sustained.
pub const PER_SECOND: f64 = 20.0;
/// How often, at most, the count of dropped lines is written.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Longest message kept; the rest is cut (an agent's line is one log line, not a dump).
const MAX_LEN: usize = 2048;

/// The log of one agent of a pipeline.
#[derive(Debug)]
pub struct AgentLog {
    agent: String,
    service: Service,
    bucket: Mutex<Bucket>,
    /// Whether lines were dropped and not yet reported: `flush`, after every agent call, reads
    /// this and takes no lock for an agent within its rate.
    dropped: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    reported: Option<Instant>,
}

impl AgentLog {
    /// The log of agent `agent` of `service`.
    pub fn new(agent: &str, service: Service) -> Self {
        Self {
            agent: agent.to_string(),
            service,
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                suppressed: 0,
                reported: None,
            }),
            dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the host's log filter lets a line of `level` through.
    pub fn enabled(level: LogLevel) -> bool {
        match level {
            LogLevel::Error => tracing::enabled!(tracing::Level::ERROR),
            LogLevel::Warn => tracing::enabled!(tracing::Level::WARN),
            LogLevel::Info => tracing::enabled!(tracing::Level::INFO),
            LogLevel::Debug => tracing::enabled!(tracing::Level::DEBUG),
            LogLevel::Trace => tracing::enabled!(tracing::Level::TRACE),
        }
    }

    /// Writes one of the agent's lines, raised in `event`, unless over the rate.
    pub fn write(&self, level: LogLevel, event: Event, message: &str) {
        if !Self::enabled(level) {
            return;
        }
        let suppressed = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * PER_SECOND).min(BURST);
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                bucket.suppressed += 1;
                self.dropped.store(true, Ordering::Relaxed);
                return;
            }
            bucket.tokens -= 1.0;
            bucket.take_report(now, true)
        };
        if let Some(n) = suppressed {
            self.report(event, n);
        }
        let message = escape(message);
        let (agent, service) = (&self.agent, self.service);
        match level {
            LogLevel::Error => tracing::error!(agent = %agent, service = %service, %event, message),
            LogLevel::Warn => tracing::warn!(agent = %agent, service = %service, %event, message),
            LogLevel::Info => tracing::info!(agent = %agent, service = %service, %event, message),
            LogLevel::Debug => tracing::debug!(agent = %agent, service = %service, %event, message),
            LogLevel::Trace => tracing::trace!(agent = %agent, service = %service, %event, message),
        }
    }

    /// After a call: writes the count of lines dropped, if any and not written too recently.
    pub fn flush(&self, event: Event) {
        if !self.dropped.load(Ordering::Relaxed) {
            return;
        }
        let suppressed = {
            let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
            let report = bucket.take_report(Instant::now(), false);
            self.dropped.store(bucket.suppressed > 0, Ordering::Relaxed);
            report
        };
        if let Some(n) = suppressed {
            self.report(event, n);
        }
    }

    fn report(&self, event: Event, suppressed: u64) {
        tracing::warn!(
            message = "Agent log lines suppressed: over its rate.",
            agent = %self.agent,
            service = %self.service,
            %event,
            suppressed,
            per_second = PER_SECOND,
        );
    }
}

impl Bucket {
    /// The count to report now, if any: always when the agent may log again (`admitted`),
    /// otherwise once per [`REPORT_EVERY`].
    fn take_report(&mut self, now: Instant, admitted: bool) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        let due = admitted
            || self
                .reported
                .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if !due {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// An agent's text is untrusted: control characters (line breaks included) are escaped so one
/// call is one log line, and the length is capped.
fn escape(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_LEN));
    for c in message.chars() {
        if out.len() >= MAX_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The sink handed to an agent for one call: its [`AgentLog`] and the event.
pub struct CallLog {
    /// The agent's log.
    pub log: std::sync::Arc<AgentLog>,
    /// The event being raised.
    pub event: Event,
    /// The span of the call (the session's or mail item's): lines the agent writes later, from
    /// its own threads, still carry it.
    pub span: tracing::Span,
}

impl LogSink for CallLog {
    fn enabled(&self, level: LogLevel) -> bool {
        AgentLog::enabled(level)
    }

    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let _in_call = self.span.enter();
        self.log.write(level, self.event, message.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_admits_a_burst_then_counts_what_it_drops() {
        let log = AgentLog::new("a", Service::Transport);
        let mut admitted = 0;
        for _ in 0..1000 {
            let mut bucket = log.bucket.lock().unwrap();
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                admitted += 1;
            } else {
                bucket.suppressed += 1;
            }
        }
        assert_eq!(admitted, BURST as usize);
        let mut bucket = log.bucket.lock().unwrap();
        let now = Instant::now();
        assert_eq!(bucket.take_report(now, false), Some(900));
        bucket.suppressed = 5;
        // Reported a moment ago: not again before REPORT_EVERY, unless a line is admitted.
        assert_eq!(bucket.take_report(now, false), None);
        assert_eq!(bucket.take_report(now, true), Some(5));
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(escape("a\nb\r\u{1b}[31m"), "a\\nb\\r\\u{1b}[31m");
        assert!(escape(&"x".repeat(10_000)).chars().count() <= MAX_LEN + 1);
    }
}
