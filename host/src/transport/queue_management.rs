//! Queue management: what an operator sees of the Transport service's queues and does to its
//! messages (Exchange's Get-Queue, Retry-Queue, Suspend-/Resume-Queue, Get-/Suspend-/Resume-/
//! Remove-Message, Export-Message; Postfix's postqueue and postsuper).
//!
//! The same listings come from a running server (live, over the control socket) and from the
//! files alone when none runs ([`offline_queues`], [`offline_messages`]). Every change goes
//! through the running server, one command at a time, and is logged and tracked. None loses
//! or duplicates a message: a copy is written where it goes (the Submission queue, a report)
//! before it leaves where it was, and a copy being delivered is never touched.

use super::delivery::Diagnosis;
use super::delivery_queue::operator::{CopyState, Taken};
use super::holds::is_copy_of;
use super::submission_queue::QueueDir;
use super::{journal, Transport, Work};
use crate::message::{EnvelopeRecipient, MailItem};
use crate::service::Service;
use crate::smtp::reply;
use crate::tracking::{EventId, Record};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// The queues kept as one file per item, apart from the delivery queues.
pub const DIRECTORY_QUEUES: [&str; 4] = ["deferred", "unreachable", "quarantine", "poison"];

/// A queue as `mta queue list` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueueInfo {
    /// Its name: `submission`, `deferred`, `unreachable`, `quarantine`, `poison`, or a
    /// delivery queue's `delivery-...`.
    pub name: String,
    /// Items (copies) in it.
    pub items: usize,
    /// Bytes of its files on disk (and of copies held in memory, for a delivery queue).
    pub bytes: u64,
    /// `active` (delivering), `retry` (every copy waits for a retry), `ready` (empty),
    /// `suspended`, or `held` (quarantine and poison: until an operator acts).
    pub status: String,
    /// When the next waiting copy is due (ms since the epoch; 0: none).
    pub next_retry_ms: u64,
    /// The last error of the next hop (its reply, or the connection error).
    pub last_error: Option<String>,
    /// When the oldest item was received (ms since the epoch; 0: none or not known).
    pub oldest_ms: u64,
    /// Copies suspended by an operator.
    pub held: usize,
}

/// A message (one copy of it) as `mta message list` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessageInfo {
    /// Its queue id (`ID-N` for the copy split off for one next hop).
    pub id: String,
    /// The queue it is in.
    pub queue: String,
    /// `ready`, `retry`, `in-flight`, `suspended`, or the directory queue's own state.
    pub state: String,
    /// The envelope sender.
    pub from: String,
    /// The envelope recipients of this copy.
    pub recipients: Vec<String>,
    /// The Message-ID field.
    pub message_id: Option<String>,
    /// The Subject field.
    pub subject: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// When the Transport service received it (ms since the epoch).
    pub received_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When it is tried next (ms since the epoch; 0: not scheduled).
    pub next_attempt_ms: u64,
    /// The last reply a next hop gave for one of its recipients.
    pub last_error: Option<String>,
    /// Why it is parked (quarantine, poison, unreachable).
    pub reason: Option<String>,
    /// The next hop of the delivery queue it waits in.
    pub next_hop: Option<String>,
}

impl MessageInfo {
    fn of(item: &MailItem, queue: &str, state: &str, attempts: u32) -> Self {
        let last_error = item.envelope.recipients.iter().find_map(|r| {
            r.last_attempt
                .as_ref()
                .map(|l| format!("{} {} {}", l.code, l.enhanced, l.text.replace('\n', " / ")))
        });
        Self {
            id: item.id.clone(),
            queue: queue.to_string(),
            state: state.to_string(),
            from: item.envelope.from.clone(),
            recipients: item
                .envelope
                .recipients
                .iter()
                .map(|r| r.address.clone())
                .collect(),
            message_id: item
                .message
                .header("Message-ID")
                .map(|v| v.trim().to_string()),
            subject: item.message.header("Subject").map(|v| v.trim().to_string()),
            size: item.message.len() as u64,
            received_ms: item.trace.received_ms,
            attempts,
            next_attempt_ms: item.trace.next_attempt_ms,
            last_error,
            reason: item
                .quarantine
                .clone()
                .or_else(|| item.trace.reason.clone()),
            next_hop: item.trace.next_hop.clone(),
        }
    }
}

/// What `mta message list` asks for; every field given must match.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MessageFilter {
    /// The envelope sender (case-insensitive).
    pub sender: Option<String>,
    /// One of the envelope recipients (case-insensitive).
    pub recipient: Option<String>,
    /// The Message-ID field, with or without its angle brackets.
    pub message_id: Option<String>,
    /// The queue.
    pub queue: Option<String>,
    /// The queue id (a message and its copies).
    pub id: Option<String>,
}

impl MessageFilter {
    /// Whether `m` matches.
    pub fn matches(&self, m: &MessageInfo) -> bool {
        let bare = |s: &str| s.trim().trim_matches(['<', '>']).to_ascii_lowercase();
        self.sender
            .as_ref()
            .is_none_or(|s| m.from.eq_ignore_ascii_case(s))
            && self
                .recipient
                .as_ref()
                .is_none_or(|r| m.recipients.iter().any(|x| x.eq_ignore_ascii_case(r)))
            && self
                .message_id
                .as_ref()
                .is_none_or(|id| m.message_id.as_deref().map(bare) == Some(bare(id)))
            && self.queue.as_ref().is_none_or(|q| &m.queue == q)
            && self.id.as_ref().is_none_or(|id| is_copy_of(&m.id, id))
    }
}

/// The state a directory queue's items are in.
fn directory_state(queue: &str) -> &'static str {
    match queue {
        "quarantine" | "poison" => "held",
        "unreachable" => "unreachable",
        _ => "deferred",
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Every item of a directory queue, with its message. Blocking.
fn directory_items(dir: &QueueDir) -> Vec<(MailItem, u32)> {
    dir.ids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| dir.load(&id).ok())
        .collect()
}

/// The envelopes of a queue directory's items, without their messages: enough for a queue's
/// summary. Blocking.
fn directory_envelopes(dir: &QueueDir) -> Vec<(MailItem, u32)> {
    dir.ids()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|id| dir.load_meta(&id).ok())
        .collect()
}

/// The names of the delivery queue directories under `<data_dir>/queue`.
fn delivery_dirs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("delivery-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn summary(name: &str, items: &[(MailItem, u32)], bytes: u64, status: &str) -> QueueInfo {
    QueueInfo {
        name: name.to_string(),
        items: items.len(),
        bytes,
        status: status.to_string(),
        next_retry_ms: items
            .iter()
            .map(|(i, _)| i.trace.next_attempt_ms)
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0),
        last_error: None,
        oldest_ms: items
            .iter()
            .map(|(i, _)| i.trace.received_ms)
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0),
        held: 0,
    }
}

/// The queues, read from the files of `data_dir` (no server running). Blocking.
pub fn offline_queues(data_dir: &Path) -> anyhow::Result<Vec<QueueInfo>> {
    let root = data_dir.join("queue");
    let mut out = Vec::new();
    let submission = journal::live_items(&root.join("journal")).unwrap_or_default();
    out.push(summary(
        "submission",
        &submission,
        dir_bytes(&root.join("journal")),
        if submission.is_empty() {
            "ready"
        } else {
            "active"
        },
    ));
    let holds = super::holds::Holds::open(&root);
    for name in delivery_dirs(&root) {
        let dir = QueueDir::open(data_dir, &name)?;
        let items = directory_envelopes(&dir);
        let mut info = summary(&name, &items, dir_bytes(dir.dir()), "");
        info.status = if holds.queue_suspended(&name) {
            "suspended"
        } else if items.is_empty() {
            "ready"
        } else {
            "retry"
        }
        .into();
        info.held = items
            .iter()
            .filter(|(i, _)| holds.message_suspended(&i.id))
            .count();
        info.last_error = items
            .iter()
            .rev()
            .find_map(|(i, a)| MessageInfo::of(i, &name, "", *a).last_error);
        out.push(info);
    }
    for name in DIRECTORY_QUEUES {
        let dir = QueueDir::open(data_dir, name)?;
        let items = directory_envelopes(&dir);
        let status = match (items.is_empty(), directory_state(name)) {
            (true, _) => "ready",
            (false, "held") => "held",
            _ => "retry",
        };
        out.push(summary(name, &items, dir_bytes(dir.dir()), status));
    }
    Ok(out)
}

/// The messages, read from the files of `data_dir` (no server running). Blocking.
pub fn offline_messages(
    data_dir: &Path,
    filter: &MessageFilter,
) -> anyhow::Result<Vec<MessageInfo>> {
    let root = data_dir.join("queue");
    let holds = super::holds::Holds::open(&root);
    let mut out = Vec::new();
    for name in delivery_dirs(&root) {
        let dir = QueueDir::open(data_dir, &name)?;
        for (item, attempts) in directory_items(&dir) {
            let state = if holds.message_suspended(&item.id) {
                "suspended"
            } else {
                "retry"
            };
            out.push(MessageInfo::of(&item, &name, state, attempts));
        }
    }
    for name in DIRECTORY_QUEUES {
        let dir = QueueDir::open(data_dir, name)?;
        for (item, attempts) in directory_items(&dir) {
            out.push(MessageInfo::of(
                &item,
                name,
                directory_state(name),
                attempts,
            ));
        }
    }
    for (item, attempts) in journal::live_items(&root.join("journal")).unwrap_or_default() {
        out.push(MessageInfo::of(&item, "submission", "submission", attempts));
    }
    out.retain(|m| filter.matches(m));
    Ok(out)
}

/// A message's bytes, read from the files of `data_dir` (no server running). Blocking.
pub fn offline_export(data_dir: &Path, id: &str) -> anyhow::Result<Vec<u8>> {
    let root = data_dir.join("queue");
    let mut names = delivery_dirs(&root);
    names.extend(DIRECTORY_QUEUES.iter().map(|s| s.to_string()));
    for name in names {
        let dir = QueueDir::open(data_dir, &name)?;
        for found in dir.ids().unwrap_or_default() {
            if is_copy_of(&found, id) {
                let (item, _) = dir.load(&found)?;
                return Ok(item.message.to_vec()?);
            }
        }
    }
    for (item, _) in journal::live_items(&root.join("journal")).unwrap_or_default() {
        if is_copy_of(&item.id, id) {
            return Ok(item.message.to_vec()?);
        }
    }
    anyhow::bail!("no message with queue id {id}")
}

/// What an operator command answers: a sentence for the operator, or why it was refused.
pub type Outcome = Result<String, String>;

/// `n` and the word for it.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

impl Transport {
    /// Items per queue, counted without reading any item (for `mta status`).
    pub async fn queue_totals(&self) -> Vec<(String, usize)> {
        let queues = Arc::clone(&self.queues);
        let mut out = blocking(move || {
            let mut out = vec![(
                "submission".to_string(),
                queues.journal.load().items() as usize,
            )];
            for name in DIRECTORY_QUEUES {
                let count = queues.directory(name).ids().map_or(0, |ids| ids.len());
                out.push((name.to_string(), count));
            }
            out
        })
        .await
        .unwrap_or_default();
        out.extend(
            self.deliveries
                .status()
                .into_iter()
                .map(|q| (q.name, q.active + q.retry + q.held)),
        );
        out
    }

    /// Every queue, live.
    pub async fn queue_list(&self) -> Vec<QueueInfo> {
        let queues = Arc::clone(&self.queues);
        let running = self.deliveries.status();
        let names: Vec<String> = running.iter().map(|q| q.name.clone()).collect();
        // Every file read and directory listing in one blocking task.
        let (mut out, bytes, idle) = blocking(move || {
            let root = queues.root();
            let mut out = Vec::new();
            let items = queues.journal.load().items() as usize;
            out.push(QueueInfo {
                name: "submission".into(),
                items,
                bytes: queues.journal.load().bytes(),
                status: if items == 0 { "ready" } else { "active" }.into(),
                ..QueueInfo::default()
            });
            for name in DIRECTORY_QUEUES {
                let dir = queues.directory(name);
                let items = directory_envelopes(&dir);
                let status = match (items.is_empty(), directory_state(name)) {
                    (true, _) => "ready",
                    (false, "held") => "held",
                    _ => "retry",
                };
                out.push(summary(name, &items, dir_bytes(&root.join(name)), status));
            }
            let bytes: Vec<u64> = names.iter().map(|n| dir_bytes(&root.join(n))).collect();
            // Delivery queue directories no copy has used since the start.
            let idle: Vec<String> = delivery_dirs(&root)
                .into_iter()
                .filter(|n| !names.contains(n))
                .collect();
            (out, bytes, idle)
        })
        .await
        .unwrap_or_default();
        let mut oldest: std::collections::HashMap<String, u64> = Default::default();
        for c in self.deliveries.copies(None, false).await {
            let t = c.item.trace.received_ms;
            if t > 0 {
                let at = oldest.entry(c.queue).or_insert(t);
                *at = (*at).min(t);
            }
        }
        for (q, bytes) in running
            .into_iter()
            .zip(bytes.into_iter().chain(std::iter::repeat(0)))
        {
            let status = if q.suspended {
                "suspended"
            } else if q.active > 0 {
                "active"
            } else if q.retry > 0 {
                "retry"
            } else {
                "ready"
            };
            out.push(QueueInfo {
                items: q.active + q.retry + q.held,
                bytes,
                status: status.into(),
                next_retry_ms: q.next_retry_ms,
                last_error: q.last_error.clone(),
                oldest_ms: oldest.get(&q.name).copied().unwrap_or(0),
                held: q.held,
                name: q.name,
            });
        }
        for name in idle {
            out.push(QueueInfo {
                status: if self.deliveries.holds_queue(&name) {
                    "suspended"
                } else {
                    "ready"
                }
                .into(),
                name,
                ..QueueInfo::default()
            });
        }
        out
    }

    /// The messages matching `filter`, live.
    pub async fn message_list(&self, filter: &MessageFilter) -> Vec<MessageInfo> {
        let mut out: Vec<MessageInfo> = self
            .deliveries
            .copies(filter.queue.as_deref(), true)
            .await
            .into_iter()
            .map(|c| {
                let state = match c.state {
                    CopyState::Ready => "ready",
                    CopyState::Retry => "retry",
                    CopyState::InFlight => "in-flight",
                    CopyState::Suspended => "suspended",
                };
                MessageInfo::of(&c.item, &c.queue, state, c.attempts)
            })
            .collect();
        let queues = Arc::clone(&self.queues);
        let parked = blocking(move || {
            let mut out = Vec::new();
            for name in DIRECTORY_QUEUES {
                for (item, attempts) in directory_items(&queues.directory(name)) {
                    out.push(MessageInfo::of(
                        &item,
                        name,
                        directory_state(name),
                        attempts,
                    ));
                }
            }
            // Accepted and still being categorized: in the Submission queue only.
            for (item, attempts) in
                journal::live_items(&queues.root().join("journal")).unwrap_or_default()
            {
                out.push(MessageInfo::of(&item, "submission", "submission", attempts));
            }
            out
        })
        .await
        .unwrap_or_default();
        for m in parked {
            let elsewhere = m.queue == "submission" && out.iter().any(|o| is_copy_of(&o.id, &m.id));
            if !elsewhere {
                out.push(m);
            }
        }
        out.retain(|m| filter.matches(m));
        out.sort_by(|a, b| (a.received_ms, &a.id).cmp(&(b.received_ms, &b.id)));
        out
    }

    /// `mta queue suspend|resume NAME`.
    pub fn queue_suspend(&self, name: &str, suspended: bool) -> Outcome {
        if !name.starts_with("delivery-") {
            return Err(format!(
                "{name} is not a delivery queue: only delivery queues (delivery-...) can be suspended"
            ));
        }
        let exists =
            self.deliveries.queue_named(name).is_some() || self.queues.root().join(name).is_dir();
        if !exists && suspended {
            return Err(format!("no delivery queue named {name}"));
        }
        let changed = self
            .deliveries
            .set_queue_suspended(name, suspended)
            .map_err(|e| format!("cannot record the change: {e}"))?;
        let verb = if suspended { "suspended" } else { "resumed" };
        tracing::info!(message = "Operator changed a queue.", queue = %name, action = verb, changed);
        Ok(if changed {
            format!("{name}: {verb}")
        } else {
            format!("{name}: already {verb}")
        })
    }

    /// `mta queue retry NAME`: a delivery queue's waiting copies are due now; the
    /// Unreachable queue is routed again.
    pub async fn queue_retry(&self, name: &str) -> Outcome {
        if name == "unreachable" {
            return self.resubmit_unreachable().await;
        }
        if self.deliveries.holds_queue(name) {
            return Err(format!(
                "{name} is suspended: resume it first (mta queue resume {name})"
            ));
        }
        let count = self.deliveries.retry_now(name).ok_or_else(|| {
            format!("no running delivery queue named {name} (see mta queue list)")
        })?;
        tracing::info!(message = "Operator retried a queue.", queue = %name, copies = count);
        Ok(format!("{name}: {count} waiting copies are due now"))
    }

    /// `mta queue resubmit unreachable`: every item of the Unreachable queue is categorized
    /// again (after connectors changed): recipients with a route now go on.
    pub async fn resubmit_unreachable(&self) -> Outcome {
        let queues = Arc::clone(&self.queues);
        let ids = blocking(move || queues.unreachable.ids().unwrap_or_default())
            .await
            .unwrap_or_default();
        for id in &ids {
            let _ = self.work.send(Work::Unreachable(id.clone()));
        }
        tracing::info!(
            message = "Operator resubmitted the Unreachable queue.",
            items = ids.len()
        );
        Ok(format!("unreachable: {} items routed again", ids.len()))
    }

    /// `mta message suspend|resume ID`.
    pub async fn message_suspend(&self, id: &str, suspended: bool) -> Outcome {
        let filter = MessageFilter {
            id: Some(id.to_string()),
            ..MessageFilter::default()
        };
        let found = self.message_list(&filter).await;
        if suspended {
            if found.is_empty() {
                return Err(format!("no message with queue id {id}"));
            }
            if let Some(parked) = found
                .iter()
                .find(|m| m.queue == "quarantine" || m.queue == "poison")
            {
                return Err(format!(
                    "{id} is in {}: it waits for an operator already (mta message release {id})",
                    parked.queue
                ));
            }
        }
        let (changed, moved) = self
            .deliveries
            .set_message_suspended(id, suspended)
            .map_err(|e| format!("cannot record the change: {e}"))?;
        if !suspended && !changed {
            return Err(format!("{id} is not suspended"));
        }
        let verb = if suspended { "suspended" } else { "resumed" };
        tracing::info!(message = "Operator changed a message.", queue_id = %id, action = verb, copies = moved);
        let busy = found.iter().filter(|m| m.state == "in-flight").count();
        Ok(format!(
            "{id}: {verb} ({}{})",
            plural(moved, "copy moved", "copies moved"),
            if busy > 0 && suspended {
                format!("; {busy} being delivered now finish their attempt")
            } else {
                String::new()
            }
        ))
    }

    /// Takes every copy of `id` out of the delivery queues and the directory queues named in
    /// `from`. Refused while a copy is being delivered (nothing is taken then).
    async fn take(&self, id: &str, from: &[&'static str]) -> Result<Vec<Taken>, String> {
        let (taken, busy) = self.deliveries.take(id).await;
        if !busy.is_empty() {
            for t in taken {
                t.put_back(&self.deliveries);
            }
            return Err(format!(
                "{} is being delivered right now; try again when the attempt is over",
                busy.join(", ")
            ));
        }
        let mut taken = taken;
        for &name in from {
            let dir = self.queues.directory(name);
            let wanted = id.to_string();
            let ids = blocking(move || dir.ids().unwrap_or_default())
                .await
                .unwrap_or_default();
            for found in ids.into_iter().filter(|f| is_copy_of(f, &wanted)) {
                let claim = format!("{name}/{found}");
                if !self.queues.claim(&claim) {
                    for t in taken {
                        t.put_back(&self.deliveries);
                    }
                    return Err(format!(
                        "{found} is being routed again right now; try again in a moment"
                    ));
                }
                let dir = self.queues.directory(name);
                let load = found.clone();
                let loaded = blocking(move || dir.load(&load)).await;
                self.queues.unclaim(&claim);
                if let Some(Ok((item, _))) = loaded {
                    taken.push(Taken::from_directory(
                        name,
                        item,
                        self.queues.directory(name),
                    ));
                }
            }
        }
        if taken.is_empty() {
            return Err(format!(
                "no message with queue id {id} in a queue it can be taken from"
            ));
        }
        Ok(taken)
    }

    /// `mta message remove ID [--ndr]`: every copy leaves its queue; with `ndr`, the sender
    /// gets a non-delivery report for each recipient.
    pub async fn message_remove(&self, id: &str, ndr: bool) -> Outcome {
        let taken = self
            .take(id, &["deferred", "unreachable", "quarantine", "poison"])
            .await?;
        let mut recipients = 0;
        for t in taken {
            recipients += t.item.envelope.recipients.len();
            if ndr {
                let why = reply(550, "5.3.0", "Removed from the queue by the administrator");
                self.reports.fail_all(&t.item, Diagnosis::local(why)).await;
            } else {
                Record::item(EventId::Drop, Service::Transport, &t.item)
                    .connector(t.queue.clone())
                    .detail("removed by the operator")
                    .write();
            }
            tracing::info!(message = "Operator removed a message.", queue_id = %t.item.id, queue = %t.queue, ndr);
            t.finish().await;
        }
        Ok(format!(
            "{id}: removed ({}{})",
            plural(recipients, "recipient", "recipients"),
            if ndr {
                ", the sender is told"
            } else {
                ", no report"
            }
        ))
    }

    /// `mta message export ID`: the message's bytes, as queued.
    pub async fn message_export(&self, id: &str) -> Result<Vec<u8>, String> {
        let item = match self.deliveries.find(id).await {
            Some(item) => Some(item),
            None => {
                let queues = Arc::clone(&self.queues);
                let wanted = id.to_string();
                blocking(move || {
                    for name in DIRECTORY_QUEUES {
                        let dir = queues.directory(name);
                        for found in dir.ids().unwrap_or_default() {
                            if is_copy_of(&found, &wanted) {
                                if let Ok((item, _)) = dir.load(&found) {
                                    return Some(item);
                                }
                            }
                        }
                    }
                    journal::live_items(&queues.root().join("journal"))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(item, _)| item)
                        .find(|item| is_copy_of(&item.id, &wanted))
                })
                .await
                .flatten()
            }
        };
        let item = item.ok_or_else(|| format!("no message with queue id {id}"))?;
        blocking(move || item.message.to_vec())
            .await
            .ok_or("the export failed")?
            .map_err(|e| format!("cannot read the message: {e}"))
    }

    /// `mta message release ID`: from Poison or quarantine back to the Submission queue, to
    /// be categorized again (by the agents as they are now).
    pub async fn message_release(&self, id: &str) -> Outcome {
        let mut done = Vec::new();
        for name in ["poison", "quarantine"] {
            let dir = self.queues.directory(name);
            let wanted = id.to_string();
            let ids = blocking(move || dir.ids().unwrap_or_default())
                .await
                .unwrap_or_default();
            for found in ids.into_iter().filter(|f| is_copy_of(f, &wanted)) {
                let dir = self.queues.directory(name);
                let load = found.clone();
                let Some(Ok((mut item, _))) = blocking(move || dir.load(&load)).await else {
                    continue;
                };
                item.quarantine = None;
                item.trace.faults = 0;
                item.trace.reason = None;
                item.trace.next_attempt_ms = 0;
                let tracked = Record::item(EventId::Resubmit, Service::Transport, &item)
                    .connector(name)
                    .detail(format!("released from {name} by the operator"));
                // Into the Submission queue first: a crash in between leaves it in both,
                // never in neither.
                self.sink
                    .0
                    .enqueue(item)
                    .await
                    .map_err(|e| format!("cannot queue {found} again: {e}"))?;
                tracked.write();
                let dir = self.queues.directory(name);
                let remove = found.clone();
                let _ = blocking(move || dir.remove(&remove)).await;
                tracing::info!(message = "Operator released a message.", queue_id = %found, queue = name);
                done.push(format!("{found} from {name}"));
            }
        }
        if done.is_empty() {
            return Err(format!(
                "no message with queue id {id} in poison or quarantine"
            ));
        }
        Ok(format!("released {}", done.join(", ")))
    }

    /// `mta message redirect ID --to ADDRESS`: the message goes to `to` instead of its
    /// recipients, categorized again as a new item; every copy of it leaves its queue.
    pub async fn message_redirect(&self, id: &str, to: &str) -> Outcome {
        crate::smtp::address::check_mailbox(to).map_err(|e| format!("--to {to:?}: {e}"))?;
        let taken = self
            .take(id, &["deferred", "unreachable", "quarantine", "poison"])
            .await?;
        let first = &taken[0].item;
        let mut item = first.clone();
        item.id = self.queues.new_id();
        item.envelope.recipients = vec![EnvelopeRecipient::new(to)];
        item.quarantine = None;
        item.trace = crate::message::Trace {
            received_ms: first.trace.received_ms,
            vouched: first.trace.vouched,
            ..Default::default()
        };
        let new_id = item.id.clone();
        let before: Vec<String> = taken
            .iter()
            .flat_map(|t| t.item.envelope.recipients.iter().map(|r| r.address.clone()))
            .collect();
        if let Err(e) = self.sink.0.enqueue(item).await {
            for t in taken {
                t.put_back(&self.deliveries);
            }
            return Err(format!("cannot queue the redirected message: {e}"));
        }
        for t in taken {
            Record::item(EventId::Redirect, Service::Transport, &t.item)
                .related(&new_id)
                .detail(format!("redirected by the operator to {to}"))
                .write();
            t.finish().await;
        }
        tracing::info!(message = "Operator redirected a message.", queue_id = %id, to = ?to, new_queue_id = %new_id);
        Ok(format!(
            "{id}: redirected to {to} as {new_id} (was for {})",
            before.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, from: &str, to: &[&str], message_id: &str) -> MessageInfo {
        MessageInfo {
            id: id.into(),
            queue: "delivery-send-Out".into(),
            from: from.into(),
            recipients: to.iter().map(|s| s.to_string()).collect(),
            message_id: Some(message_id.into()),
            ..MessageInfo::default()
        }
    }

    #[test]
    fn filters_match_every_field_given() {
        let m = info("AB12-1", "Ann@Client.test", &["bob@far.test"], "<x@y>");
        assert!(MessageFilter::default().matches(&m));
        let f = |f: MessageFilter| f.matches(&m);
        assert!(f(MessageFilter {
            sender: Some("ann@client.test".into()),
            ..Default::default()
        }));
        assert!(f(MessageFilter {
            message_id: Some("x@y".into()),
            recipient: Some("BOB@far.test".into()),
            ..Default::default()
        }));
        assert!(f(MessageFilter {
            id: Some("AB12".into()),
            ..Default::default()
        }));
        assert!(!f(MessageFilter {
            id: Some("AB1".into()),
            ..Default::default()
        }));
        assert!(!f(MessageFilter {
            queue: Some("poison".into()),
            ..Default::default()
        }));
        assert!(!f(MessageFilter {
            sender: Some("ann@client.test".into()),
            recipient: Some("carol@far.test".into()),
            ..Default::default()
        }));
    }
}
