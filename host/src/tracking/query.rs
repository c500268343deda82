//! Reading the tracking log back: `mta track` selects messages by Message-ID, queue id,
//! sender or recipient and tells each one's story in order, across the services.
//!
//! Records of one message are tied together by its Message-ID, and by queue ids: a Front End
//! record names Transport's queue id in the reply it relayed, a copy split off names its new
//! id in `related`, so a story follows the message through every hop and fork.

use super::{EventId, Record};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What to select.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// A Message-ID, with or without its angle brackets.
    pub message_id: Option<String>,
    /// A queue id.
    pub queue_id: Option<String>,
    /// The envelope sender (case-insensitive).
    pub sender: Option<String>,
    /// One of the recipients (case-insensitive).
    pub recipient: Option<String>,
    /// Only records at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only records of this event (the story still selects on every record).
    pub event: Option<EventId>,
}

/// The records of one message, in time order.
#[derive(Debug)]
pub struct Story {
    /// Its Message-ID, if a record carried one.
    pub message_id: Option<String>,
    /// Every record.
    pub records: Vec<Record>,
}

/// Every record under `dir`, oldest day first, in the order written; lines that do not parse
/// are skipped (a torn last line of a crash). Day files before `since_ms`'s day are not read.
pub fn read_records(dir: &Path, since_ms: Option<u64>) -> std::io::Result<Vec<Record>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    names.sort();
    let first_day = since_ms.map(|ms| {
        crate::message::date::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
            [..10]
            .to_string()
    });
    let mut records = Vec::new();
    for name in names {
        if first_day.as_deref().is_some_and(|d| name.as_str() < d) {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(&name))?;
        records.extend(
            text.lines()
                .filter_map(|line| serde_json::from_str::<Record>(line).ok()),
        );
    }
    Ok(records)
}

fn bare(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

/// The Transport queue id a relayed reply names (`250 2.6.0 <ID> Queued mail for delivery`,
/// `250 2.1.0 <ID> Sender OK`).
pub fn queued_id(reply: &str) -> Option<&str> {
    let start = reply.find('<')?;
    let end = reply[start..].find('>')? + start;
    let id = &reply[start + 1..end];
    (!id.is_empty() && !id.contains('@')).then_some(id)
}

/// A union-find over record indexes, joining records that share an id.
struct Groups {
    parent: Vec<usize>,
}

impl Groups {
    fn find(&mut self, i: usize) -> usize {
        let mut root = i;
        while self.parent[root] != root {
            root = self.parent[root];
        }
        let mut i = i;
        while self.parent[i] != root {
            let next = self.parent[i];
            self.parent[i] = root;
            i = next;
        }
        root
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[b] = a;
        }
    }
}

/// Groups `records` into stories and keeps those `filter` selects.
pub fn stories(records: Vec<Record>, filter: &Filter) -> Vec<Story> {
    let mut groups = Groups {
        parent: (0..records.len()).collect(),
    };
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let mut keys = Vec::new();
        if let Some(id) = &r.message_id {
            keys.push(format!("m:{}", bare(id)));
        }
        if !r.queue_id.is_empty() {
            keys.push(format!("q:{}", r.queue_id));
        }
        if let Some(id) = r.reply.as_deref().and_then(queued_id) {
            keys.push(format!("q:{id}"));
        }
        if let Some(id) = &r.related {
            if r.event == Some(EventId::Transfer) {
                keys.push(format!("q:{id}"));
            }
        }
        for key in keys {
            match by_key.get(&key) {
                Some(&j) => groups.join(j, i),
                None => {
                    by_key.insert(key, i);
                }
            }
        }
    }
    let selects = |r: &Record| {
        filter
            .message_id
            .as_deref()
            .is_none_or(|id| r.message_id.as_deref().is_some_and(|m| bare(m) == bare(id)))
            && filter.queue_id.as_deref().is_none_or(|id| {
                r.queue_id == id || r.reply.as_deref().and_then(queued_id) == Some(id)
            })
            && filter
                .sender
                .as_deref()
                .is_none_or(|s| r.sender.eq_ignore_ascii_case(s))
            && filter
                .recipient
                .as_deref()
                .is_none_or(|a| r.recipients.iter().any(|x| x.eq_ignore_ascii_case(a)))
    };
    let mut chosen: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let selected: Vec<bool> = records.iter().map(selects).collect();
    let mut wanted = std::collections::HashSet::new();
    for (i, s) in selected.iter().enumerate() {
        if *s {
            wanted.insert(groups.find(i));
        }
    }
    for i in 0..records.len() {
        let root = groups.find(i);
        if wanted.contains(&root) {
            chosen.entry(root).or_default().push(i);
        }
    }
    let mut slots: Vec<Option<Record>> = records.into_iter().map(Some).collect();
    let mut stories: Vec<Story> = chosen
        .into_values()
        .map(|indexes| {
            let mut records: Vec<Record> = indexes
                .into_iter()
                .filter_map(|i| slots[i].take())
                .filter(|r| {
                    filter.event.is_none_or(|e| r.event == Some(e))
                        && filter.since_ms.is_none_or(|since| {
                            crate::message::date::ms_from_rfc3339(&r.time)
                                .is_some_and(|t| t >= since)
                        })
                })
                .collect();
            records.sort_by(|a, b| a.time.cmp(&b.time));
            Story {
                message_id: records.iter().find_map(|r| r.message_id.clone()),
                records,
            }
        })
        .filter(|s| !s.records.is_empty())
        .collect();
    stories.sort_by(|a, b| a.records[0].time.cmp(&b.records[0].time));
    stories
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(time: &str, event: EventId, service: &str) -> Record {
        Record {
            time: time.into(),
            event: Some(event),
            service: service.into(),
            ..Record::default()
        }
    }

    #[test]
    fn a_story_follows_the_queue_id_the_front_end_relayed_and_forks() {
        let mut fe = rec("2026-12-02T10:00:00.000Z", EventId::Receive, "frontend");
        fe.sender = "a@x.test".into();
        fe.recipients = vec!["bob@y.test".into()];
        fe.reply = Some("250 2.6.0 <Q1> Queued mail for delivery".into());
        let mut tr = rec("2026-12-02T10:00:00.001Z", EventId::Receive, "transport");
        tr.queue_id = "Q1".into();
        tr.message_id = Some("<m1@x.test>".into());
        let mut fork = rec("2026-12-02T10:00:00.002Z", EventId::Transfer, "transport");
        fork.queue_id = "Q1".into();
        fork.related = Some("Q2".into());
        let mut send = rec("2026-12-02T10:00:00.003Z", EventId::Send, "transport");
        send.queue_id = "Q2".into();
        let mut other = rec("2026-12-02T10:00:00.004Z", EventId::Reject, "frontend");
        other.sender = "z@z.test".into();
        let records = vec![send, other, fe, tr, fork];
        let filter = Filter {
            recipient: Some("BOB@y.test".into()),
            ..Filter::default()
        };
        let found = stories(records.clone(), &filter);
        assert_eq!(found.len(), 1);
        let events: Vec<_> = found[0].records.iter().map(|r| r.event.unwrap()).collect();
        assert_eq!(
            events,
            [
                EventId::Receive,
                EventId::Receive,
                EventId::Transfer,
                EventId::Send
            ]
        );
        assert_eq!(found[0].message_id.as_deref(), Some("<m1@x.test>"));
        let by_id = Filter {
            message_id: Some("m1@x.test".into()),
            event: Some(EventId::Send),
            ..Filter::default()
        };
        let found = stories(records, &by_id);
        assert_eq!(found[0].records.len(), 1);
        assert_eq!(found[0].records[0].queue_id, "Q2");
    }
}
