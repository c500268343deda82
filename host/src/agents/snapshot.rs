//! Pipeline tracing (Exchange's message snapshots): the message and envelope as each agent
//! left them, one file per agent call, so an operator can see which agent changed what.
//!
//! Turned on per service by `<messageSnapshot enabled="true"/>` in its agents file; the flag is
//! part of the pipeline snapshot, so a reload turns it on or off for the sessions and mail
//! items that start after it, and the dispatcher reads it once per event: with tracing off, an
//! agent call costs nothing more. `[snapshots]` in mta.toml bounds it (senders to trace,
//! largest message recorded, days kept).
//!
//! Files go under `<data_dir>/snapshots/<queue-id>/NNN-<service>-<event>-<agent>.eml`, keyed
//! by the Transport queue id (the Front End learns it from Transport's MAIL reply), numbered
//! in the order they were taken across the services of the process. `000-...-original.eml` is
//! the item as the first traced event found it; when the host itself changed the item between
//! two traced events (the header block or the body arrived, a Received field was added,
//! unknown recipients were resolved away), a `...-host.eml` records the state the next agents
//! start from, so no agent is blamed for what the host did.
//!
//! A file is the message with leading pseudo-header lines, as in Exchange's replay format: the
//! `X-Snapshot-*` lines say who and when; `X-Sender` and one `X-Receiver` per recipient are the
//! envelope (with the recipient's routing override, NOTIFY and ORCPT as parameters);
//! `X-EndOfInjectedXHeaders` ends them and says what of the message follows. Only mail items
//! are traced: the events before MAIL has been accepted (connect, HELO, MAIL itself) have no
//! queue id and no envelope to record.
//!
//! Snapshots are written on the agents' thread right after each call (outside the call's time
//! limit), so their order is the calls' order and no copy of the message waits in memory; this
//! is file I/O on the agents' pool, accepted because it only happens while an operator traces.
//!
//! This module owns the format (writing, and [`read`] for `mta trace`) and the files; it never
//! touches the mail item, and a snapshot that cannot be written is logged, never a fault.

use crate::message::MailItem;
use crate::service::Service;
use arc_swap::ArcSwap;
use mta_agent_sdk::{Action, Event};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// The pseudo-header that ends the injected lines; its value says what of the message follows.
pub const END: &str = "X-EndOfInjectedXHeaders";

/// How much of the message a snapshot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// The envelope only: at RCPT and DATA there is no message yet.
    Envelope,
    /// The header block: at OnEndOfHeaders the body has not arrived.
    Headers,
    /// The whole message.
    Message,
    /// The message was larger than `[snapshots] max_message_size` (its size), so only the
    /// envelope was recorded.
    Omitted(u64),
}

impl Content {
    fn as_value(&self) -> String {
        match self {
            Self::Envelope => "envelope".into(),
            Self::Headers => "headers".into(),
            Self::Message => "message".into(),
            Self::Omitted(size) => format!("omitted {size} bytes"),
        }
    }

    fn parse(value: &str) -> Self {
        let value = value.trim();
        match value {
            "headers" => Self::Headers,
            "message" => Self::Message,
            _ => value
                .strip_prefix("omitted ")
                .and_then(|v| v.trim_end_matches(" bytes").parse().ok())
                .map_or(Self::Envelope, Self::Omitted),
        }
    }
}

/// Who left the item in the state a snapshot records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The item as the first traced event found it.
    Original,
    /// The item as the host handed it to an event's agents, changed since the last snapshot.
    Host,
    /// The item as an agent left it.
    Agent,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Original => "original",
            Self::Host => "host",
            Self::Agent => "agent",
        }
    }
}

/// `[snapshots]` of mta.toml, resolved.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `<data_dir>/snapshots`.
    pub dir: PathBuf,
    /// Trace only items from these envelope senders (lower case); empty: every item.
    pub senders: Vec<String>,
    /// A message larger than this is recorded as its envelope only.
    pub max_message_size: u64,
    /// Directories older than this many days are removed (0: kept).
    pub days: u32,
}

impl Settings {
    fn traces(&self, sender: &str) -> bool {
        self.senders.is_empty() || self.senders.iter().any(|s| s.eq_ignore_ascii_case(sender))
    }
}

/// The process's snapshot store: where files go, and each traced item's next number.
struct Store {
    settings: ArcSwap<Settings>,
    items: Mutex<HashMap<String, Sequence>>,
}

/// What is known of a traced item's files: the next number, and a digest of the last state
/// recorded (to tell whether the host changed the item between two events).
struct Sequence {
    next: u32,
    last: Option<u64>,
}

/// Items whose numbering is kept in memory at most; past it the map is cleared and numbering
/// is read back from the directories (a restart does the same).
const REMEMBERED: usize = 4096;

static STORE: OnceLock<Store> = OnceLock::new();

/// Opens the store (`mta run`, once) and starts removing directories past the retention,
/// hourly. The directory (0700) is made with the first snapshot, so a host that never traces
/// has none. Without a store nothing is ever traced (one-shot commands, tests of parts).
pub fn install(settings: Settings) -> std::io::Result<()> {
    if STORE.get().is_some() {
        configure(settings);
        return Ok(());
    }
    let _ = STORE.set(Store {
        settings: ArcSwap::from_pointee(settings),
        items: Mutex::new(HashMap::new()),
    });
    std::thread::Builder::new()
        .name("mta-snapshots".into())
        .spawn(|| loop {
            if let Some(store) = STORE.get() {
                let settings = store.settings.load_full();
                sweep(&settings.dir, settings.days, SystemTime::now());
            }
            std::thread::sleep(Duration::from_secs(3600));
        })?;
    Ok(())
}

/// Replaces the settings of an installed store (a reload of the host configuration).
pub fn configure(settings: Settings) {
    if let Some(store) = STORE.get() {
        store.settings.store(Arc::new(settings));
    }
}

/// Removes the item directories under `dir` last changed more than `days` days before `now`.
pub fn sweep(dir: &Path, days: u32, now: SystemTime) {
    if days == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let limit = Duration::from_secs(u64::from(days) * 86_400);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > limit);
        if old {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(message = "Cannot remove an old snapshot directory.", path = %entry.path().display(), error = %e);
            }
        }
    }
}

/// Whether `id` can name a directory: what queue ids are made of, and nothing that climbs out
/// of the snapshot directory (the Front End's comes from another node's reply).
pub fn valid_queue_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An agent's name as a part of a file name: letters, digits, `.`, `-` and `_` kept, anything
/// else (spaces) becomes `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The file name of snapshot `n`.
pub fn file_name(n: u32, service: Service, event: Event, agent: &str) -> String {
    format!("{n:03}-{service}-{event}-{}.eml", file_safe(agent))
}

/// Tracing of one event's agent calls on one mail item.
pub struct Tracer {
    store: &'static Store,
    settings: Arc<Settings>,
    service: Service,
    event: Event,
    queue_id: String,
    /// Actions already recorded (the context accumulates them over the event's agents).
    actions_seen: usize,
}

impl Tracer {
    /// Starts tracing `event`'s agents on `item`, when a store is installed, the item has a
    /// queue id and its sender is one the settings trace (an item already traced stays traced,
    /// whatever an agent made its sender). Records the state the agents start from if it is
    /// the first, or if the host changed the item since the last snapshot.
    pub fn begin(service: Service, event: Event, item: &MailItem) -> Option<Tracer> {
        let store = STORE.get()?;
        if !valid_queue_id(&item.id) {
            return None;
        }
        let settings = store.settings.load_full();
        let known = {
            let items = store.items.lock().unwrap_or_else(|e| e.into_inner());
            items.contains_key(&item.id)
        };
        let traced_before = known || settings.dir.join(&item.id).is_dir();
        if !traced_before && !settings.traces(&item.envelope.from) {
            return None;
        }
        let tracer = Tracer {
            store,
            settings,
            service,
            event,
            queue_id: item.id.clone(),
            actions_seen: 0,
        };
        tracer.record(item, None, &[], None);
        Some(tracer)
    }

    /// Records `item` as `agent` left it, with the actions it asked for (the tail of
    /// `actions` not seen yet) and its fault, if any.
    pub fn after(
        &mut self,
        agent: &str,
        item: Option<&MailItem>,
        actions: &[Action],
        fault: Option<&str>,
    ) {
        let new = actions.get(self.actions_seen..).unwrap_or_default();
        self.actions_seen = actions.len();
        if let Some(item) = item {
            self.record(item, Some(agent), new, fault);
        }
    }

    /// Writes a snapshot: an agent's, or (no agent) the state an event starts from, only when
    /// it differs from the last one recorded.
    fn record(
        &self,
        item: &MailItem,
        agent: Option<&str>,
        actions: &[Action],
        fault: Option<&str>,
    ) {
        let (payload, content) = payload(item, self.event, self.settings.max_message_size);
        let digest = digest(&payload);
        let dir = self.settings.dir.join(&self.queue_id);
        let n = {
            let mut items = self.store.items.lock().unwrap_or_else(|e| e.into_inner());
            if !items.contains_key(&self.queue_id) {
                if items.len() >= REMEMBERED {
                    items.clear();
                }
                items.insert(self.queue_id.clone(), read_sequence(&dir));
            }
            let Some(sequence) = items.get_mut(&self.queue_id) else {
                return;
            };
            if agent.is_none() && sequence.last == Some(digest) {
                return;
            }
            sequence.last = Some(digest);
            sequence.next += 1;
            sequence.next - 1
        };
        let kind = match agent {
            Some(_) => Kind::Agent,
            None if n == 0 => Kind::Original,
            None => Kind::Host,
        };
        let name = agent.unwrap_or(kind.as_str());
        let mut file = Vec::with_capacity(payload.len() + 512);
        let mut line = |name: &str, value: &str| {
            file.extend_from_slice(format!("{name}: {}\r\n", one_line(value)).as_bytes());
        };
        line("X-Snapshot-Service", self.service.as_str());
        line("X-Snapshot-Event", self.event.name());
        line("X-Snapshot-Agent", name);
        line("X-Snapshot-Kind", kind.as_str());
        line("X-Snapshot-Queue-Id", &self.queue_id);
        line(
            "X-Snapshot-Time",
            &crate::message::date::rfc3339(SystemTime::now()),
        );
        for action in actions {
            line("X-Snapshot-Action", &describe(action));
        }
        if let Some(fault) = fault {
            line("X-Snapshot-Fault", fault);
        }
        file.extend_from_slice(&payload);
        let path = dir.join(file_name(n, self.service, self.event, name));
        if let Content::Omitted(size) = content {
            if kind != Kind::Agent {
                tracing::info!(message = "Message too large for pipeline tracing; recording its envelope only.", queue_id = %self.queue_id, size, limit = self.settings.max_message_size);
            }
        }
        if let Err(e) = write_private(&dir, &path, &file) {
            tracing::warn!(message = "Cannot write a message snapshot.", path = %path.display(), error = %e);
        }
    }
}

/// The envelope lines, the end line and the message: what a snapshot records of the item.
fn payload(item: &MailItem, event: Event, max: u64) -> (Vec<u8>, Content) {
    let mut out = Vec::new();
    out.extend_from_slice(format!("X-Sender: <{}>\r\n", one_line(&item.envelope.from)).as_bytes());
    for r in &item.envelope.recipients {
        let mut value = format!("<{}>", r.address);
        if let Some(domain) = &r.routing_override {
            value.push_str(&format!(" ROUTING={domain}"));
        }
        if let Some(notify) = r.notify {
            value.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = &r.orcpt {
            value.push_str(&format!(" ORCPT={orcpt}"));
        }
        out.extend_from_slice(format!("X-Receiver: {}\r\n", one_line(&value)).as_bytes());
    }
    let size = item.message.len() as u64;
    let mut content = match event {
        _ if item.message.is_empty() => Content::Envelope,
        Event::OnEndOfHeaders => Content::Headers,
        _ => Content::Message,
    };
    if content != Content::Envelope && size > max {
        content = Content::Omitted(size);
    }
    out.extend_from_slice(format!("{END}: {}\r\n", content.as_value()).as_bytes());
    match content {
        Content::Headers => out.extend_from_slice(&item.message.head()),
        Content::Message => {
            if let Err(e) = item.message.write_to(&mut out) {
                tracing::warn!(message = "Cannot read a spooled body back for a snapshot.", queue_id = %item.id, error = %e);
            }
        }
        Content::Envelope | Content::Omitted(_) => {}
    }
    (out, content)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The numbering of an item not in memory: after the highest file in its directory, whose
/// payload is the last state recorded.
fn read_sequence(dir: &Path) -> Sequence {
    let last = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some((number(&name)?, e.path()))
            })
            .max_by_key(|(n, _)| *n)
    });
    match last {
        None => Sequence {
            next: 0,
            last: None,
        },
        Some((n, path)) => Sequence {
            next: n + 1,
            last: std::fs::read(&path)
                .ok()
                .map(|bytes| digest(payload_of(&bytes))),
        },
    }
}

/// The number a snapshot file name starts with.
pub fn number(name: &str) -> Option<u32> {
    if !name.ends_with(".eml") {
        return None;
    }
    name.split('-').next()?.parse().ok()
}

/// The bytes of a snapshot file after its `X-Snapshot-*` lines.
fn payload_of(file: &[u8]) -> &[u8] {
    let mut at = 0;
    while file[at..].starts_with(b"X-Snapshot-") {
        match memchr::memchr(b'\n', &file[at..]) {
            Some(end) => at += end + 1,
            None => return &[],
        }
    }
    &file[at..]
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes a new file readable by its owner only, in `dir` (made 0700 if missing). The file
/// must not exist: a name is never reused, and nothing planted there is followed.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !dir.is_dir() {
        create_private_dir(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// A value on one line: control characters (CR, LF) escaped, so a pseudo-header never ends
/// early nor injects another.
fn one_line(value: &str) -> String {
    if !value.chars().any(char::is_control) {
        return value.to_string();
    }
    value
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// An action as a snapshot line says it: its kind and arguments, short.
fn describe(action: &Action) -> String {
    match action {
        Action::SubmitMessage {
            from, recipients, ..
        } => format!(
            "SubmitMessage from <{from}> to {}",
            recipients
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => {
            let mut text = format!("{other:?}");
            if text.len() > 300 {
                let mut cut = 300;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push_str("...");
            }
            text
        }
    }
}

/// One snapshot file read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Its file name.
    pub file: String,
    /// Its number.
    pub number: u32,
    /// `frontend`, `transport`.
    pub service: String,
    /// The event.
    pub event: String,
    /// The agent (or `original`, `host`).
    pub agent: String,
    /// Who left the item so.
    pub kind: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// Actions the agent asked for, as recorded.
    pub actions: Vec<String>,
    /// The agent's fault, if it faulted.
    pub fault: Option<String>,
    /// The envelope sender.
    pub sender: String,
    /// The recipients, each as `<address>` and its parameters.
    pub recipients: Vec<String>,
    /// What of the message follows.
    pub content: Content,
    /// The message (or its header block), as recorded.
    pub message: Vec<u8>,
}

/// Parses a snapshot file.
pub fn parse(file: &str, bytes: &[u8]) -> Option<Snapshot> {
    let mut snapshot = Snapshot {
        file: file.to_string(),
        number: number(file)?,
        service: String::new(),
        event: String::new(),
        agent: String::new(),
        kind: String::new(),
        time: String::new(),
        actions: Vec::new(),
        fault: None,
        sender: String::new(),
        recipients: Vec::new(),
        content: Content::Envelope,
        message: Vec::new(),
    };
    let mut at = 0;
    loop {
        let end = at + memchr::memchr(b'\n', &bytes[at..])?;
        let line = String::from_utf8_lossy(&bytes[at..end]);
        at = end + 1;
        let (name, value) = line.trim_end_matches('\r').split_once(':')?;
        let value = value.trim().to_string();
        match name {
            "X-Snapshot-Service" => snapshot.service = value,
            "X-Snapshot-Event" => snapshot.event = value,
            "X-Snapshot-Agent" => snapshot.agent = value,
            "X-Snapshot-Kind" => snapshot.kind = value,
            "X-Snapshot-Time" => snapshot.time = value,
            "X-Snapshot-Action" => snapshot.actions.push(value),
            "X-Snapshot-Fault" => snapshot.fault = Some(value),
            "X-Sender" => {
                snapshot.sender = value
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            }
            "X-Receiver" => snapshot.recipients.push(value),
            END => {
                snapshot.content = Content::parse(&value);
                snapshot.message = bytes[at..].to_vec();
                return Some(snapshot);
            }
            _ => {}
        }
    }
}

/// Every snapshot of `queue_id` under `dir`, in order, then those of the copies split off it
/// for each next hop (`<queue-id>-0`, `-1`, ...). Files that do not parse are skipped.
pub fn read(dir: &Path, queue_id: &str) -> std::io::Result<Vec<(String, Vec<Snapshot>)>> {
    let mut ids = vec![queue_id.to_string()];
    let prefix = format!("{queue_id}-");
    let mut copies: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.strip_prefix(&prefix)
                .is_some_and(|rest| rest.parse::<u32>().is_ok())
        })
        .collect();
    copies.sort();
    ids.extend(copies);
    let mut out = Vec::new();
    for id in ids {
        let Ok(entries) = std::fs::read_dir(dir.join(&id)) else {
            continue;
        };
        let mut snapshots: Vec<Snapshot> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let bytes = std::fs::read(e.path()).ok()?;
                parse(&name, &bytes)
            })
            .collect();
        snapshots.sort_by_key(|s| s.number);
        out.push((id, snapshots));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{EnvelopeRecipient, Message};

    fn item() -> MailItem {
        let mut item = MailItem {
            id: "Q1".into(),
            message: Message::parse(b"Subject: hi\r\n\r\nhello\r\n"),
            ..MailItem::default()
        };
        item.envelope.from = "a@b.test".into();
        let mut r = EnvelopeRecipient::new("c@d.test");
        r.routing_override = Some("MOBILE".into());
        item.envelope.recipients.push(r);
        item
    }

    #[test]
    fn a_payload_reads_back_with_its_envelope_and_message() {
        let (payload, content) = payload(&item(), Event::OnEndOfData, 1 << 20);
        assert_eq!(content, Content::Message);
        let mut file = b"X-Snapshot-Service: transport\r\nX-Snapshot-Agent: Stamp\r\nX-Snapshot-Action: Discard\r\n".to_vec();
        file.extend_from_slice(&payload);
        assert_eq!(payload_of(&file), &payload[..]);
        let s = parse("003-transport-OnEndOfData-Stamp.eml", &file).unwrap();
        assert_eq!(s.number, 3);
        assert_eq!(
            (s.service.as_str(), s.agent.as_str()),
            ("transport", "Stamp")
        );
        assert_eq!(s.actions, ["Discard"]);
        assert_eq!(s.sender, "a@b.test");
        assert_eq!(s.recipients, ["<c@d.test> ROUTING=MOBILE"]);
        assert_eq!(s.message, b"Subject: hi\r\n\r\nhello\r\n");
    }

    #[test]
    fn large_messages_and_early_events_record_the_envelope_only() {
        let (bytes, content) = payload(&item(), Event::OnEndOfData, 4);
        assert!(matches!(content, Content::Omitted(n) if n > 4));
        let size = item().message.len();
        assert!(bytes.ends_with(format!("{END}: omitted {size} bytes\r\n").as_bytes()));
        let mut early = item();
        early.message = Message::default();
        assert_eq!(
            payload(&early, Event::OnRcptCommand, 1 << 20).1,
            Content::Envelope
        );
    }

    #[test]
    fn names_are_file_safe_and_values_one_line() {
        assert_eq!(
            file_name(7, Service::FrontEnd, Event::OnEndOfHeaders, "My agent/x"),
            "007-frontend-OnEndOfHeaders-My_agent_x.eml"
        );
        assert_eq!(one_line("a\r\nb"), "a\\r\\nb");
        assert!(valid_queue_id("0193ab-12"));
        assert!(!valid_queue_id("../etc") && !valid_queue_id("") && !valid_queue_id("a/b"));
    }

    #[test]
    fn a_tracer_numbers_files_records_host_changes_once_and_resumes_after_a_restart() {
        let dir = std::env::temp_dir().join(format!("mta-snapshot-tracer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        install(Settings {
            dir: dir.clone(),
            senders: vec!["a@b.test".into()],
            max_message_size: 1 << 20,
            days: 0,
        })
        .unwrap();
        let mut item = item();
        item.id = "T1".into();
        let mut tracer = Tracer::begin(Service::Transport, Event::OnEndOfData, &item).unwrap();
        item.message.add_header("X-Stamp", "yes").unwrap();
        tracer.after("Stamp", Some(&item), &[Action::Discard], None);
        // The next event finds the item as the agent left it: no host snapshot.
        let mut next = Tracer::begin(Service::Transport, Event::OnSubmittedMessage, &item).unwrap();
        next.after("Router", Some(&item), &[], Some("boom"));
        let names = |d: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().into_string().unwrap())
                .collect();
            n.sort();
            n
        };
        assert_eq!(
            names(&dir.join("T1")),
            [
                "000-transport-OnEndOfData-original.eml",
                "001-transport-OnEndOfData-Stamp.eml",
                "002-transport-OnSubmittedMessage-Router.eml"
            ]
        );
        let stamp = std::fs::read(dir.join("T1/001-transport-OnEndOfData-Stamp.eml")).unwrap();
        let stamp = parse("001-transport-OnEndOfData-Stamp.eml", &stamp).unwrap();
        assert_eq!(
            (stamp.kind.as_str(), stamp.actions.as_slice()),
            ("agent", &["Discard".to_string()][..])
        );
        // After a restart (numbering forgotten), a host change is recorded, numbered on.
        STORE.get().unwrap().items.lock().unwrap().clear();
        item.envelope.recipients.clear();
        Tracer::begin(Service::Transport, Event::OnRoutedMessage, &item).unwrap();
        assert_eq!(
            names(&dir.join("T1")).last().unwrap(),
            "003-transport-OnRoutedMessage-host.eml"
        );
        // Another sender is not traced; a queue id that is no file name neither.
        item.id = "T2".into();
        item.envelope.from = "x@y.test".into();
        assert!(Tracer::begin(Service::Transport, Event::OnEndOfData, &item).is_none());
        item.id = "../T3".into();
        item.envelope.from = "a@b.test".into();
        assert!(Tracer::begin(Service::Transport, Event::OnEndOfData, &item).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sweep_removes_only_directories_past_retention() {
        let dir = std::env::temp_dir().join(format!("mta-snapshot-sweep-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("Q1")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(3 * 86_400);
        sweep(&dir, 7, later);
        assert!(dir.join("Q1").exists());
        sweep(&dir, 2, later);
        assert!(!dir.join("Q1").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
