//! Edits of an agents file by the management commands, done on the text so that comments,
//! formatting and unknown attributes survive, and written atomically.

use crate::agents::file::{self, AgentEntry, AgentsFile};
use mta_agent_sdk::AgentClass;
use std::path::Path;

/// A new, empty agents file in Exchange's format.
pub const EMPTY_FILE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <mexRuntime>
    <monitoring>
      <agentExecution timeLimitInMilliseconds="300000" />
      <messageSnapshot enabled="false" />
    </monitoring>
    <agentList>
    </agentList>
  </mexRuntime>
</configuration>
"#;

/// Why an edit was refused.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// No agent of that name.
    #[error("no agent named {0:?} in {1}")]
    NoSuchAgent(String, String),
    /// The agent has no canary.
    #[error("agent {0:?} has no canary (no entry with canaryOf={0:?})")]
    NoCanary(String),
    /// The name is taken.
    #[error("an agent named {0:?} is already installed (names are unique ignoring case)")]
    NameTaken(String),
    /// Priority out of range.
    #[error("priority {0} is out of range: expected 1 to {1}")]
    BadPriority(usize, usize),
    /// The result would not parse (a bug, or a file changed meanwhile).
    #[error("the edited file would be invalid:\n{0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Finds an entry by name, ignoring case.
pub fn find<'a>(file: &'a AgentsFile, name: &str) -> Result<(usize, &'a AgentEntry), EditError> {
    file.agents
        .iter()
        .enumerate()
        .find(|(_, e)| e.name.value.eq_ignore_ascii_case(name))
        .ok_or_else(|| EditError::NoSuchAgent(name.to_string(), file.path.display().to_string()))
}

/// Text of a new entry (enabled="false", as Exchange's Install-TransportAgent writes it).
pub fn entry_xml(
    name: &str,
    class: AgentClass,
    factory: &str,
    assembly: &str,
    parameters: &[(String, String)],
) -> String {
    let head = format!(
        r#"<agent name="{}" baseType="{}" classFactory="{}" assemblyPath="{}" enabled="false""#,
        escape(name),
        class.exchange_name(),
        escape(factory),
        escape(assembly)
    );
    if parameters.is_empty() {
        return format!("{head} />");
    }
    let mut out = format!("{head}>\n");
    for (n, v) in parameters {
        out.push_str(&format!(
            "  <parameter name=\"{}\" value=\"{}\" />\n",
            escape(n),
            escape(v)
        ));
    }
    out.push_str("</agent>");
    out
}

/// Text of a canary entry of `of`, serving `percent` of new sessions or mail items; enabled as
/// its current agent is, since the point of a canary is to serve at once.
#[allow(clippy::too_many_arguments)]
pub fn canary_entry_xml(
    name: &str,
    class: AgentClass,
    factory: &str,
    assembly: &str,
    parameters: &[(String, String)],
    of: &str,
    percent: u32,
    enabled: bool,
) -> String {
    entry_xml(name, class, factory, assembly, parameters).replacen(
        r#" enabled="false""#,
        &format!(
            r#" enabled="{enabled}" canaryOf="{}" canary="{percent}""#,
            escape(of)
        ),
        1,
    )
}

/// The canary entry of the agent named `name` (or the canary named `name`): (current, canary).
pub fn find_canary<'a>(
    file: &'a AgentsFile,
    name: &str,
) -> Result<(&'a AgentEntry, &'a AgentEntry), EditError> {
    let (_, named) = find(file, name)?;
    let current = match &named.canary {
        Some(c) => find(file, &c.of.value)?.1,
        None => named,
    };
    file.agents
        .iter()
        .find(|e| {
            e.canary
                .as_ref()
                .is_some_and(|c| c.of.value.eq_ignore_ascii_case(&current.name.value))
        })
        .map(|canary| (current, canary))
        .ok_or_else(|| EditError::NoCanary(current.name.value.clone()))
}

/// Promotes a canary: its entry, without `canaryOf` and `canary` and under the current agent's
/// name, takes the current entry's place (and priority); the canary's own entry goes.
pub fn promote(file: &AgentsFile, current: &AgentEntry, canary: &AgentEntry) -> String {
    let text = &file.text;
    let attrs = canary.canary.as_ref().expect("a canary entry");
    let mut cuts: Vec<(std::ops::Range<usize>, &str)> =
        attrs.attributes.iter().map(|r| (r.clone(), "")).collect();
    let escaped = escape(&current.name.value);
    cuts.push((attrs.name_value.clone(), escaped.as_str()));
    cuts.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut promoted = text[canary.span.clone()].to_string();
    for (range, with) in cuts {
        let r = range.start - canary.span.start..range.end - canary.span.start;
        promoted.replace_range(r, with);
    }
    let removed = whole_lines(text, canary.span.clone());
    let replaced = current.span.clone();
    if removed.0 > replaced.start {
        format!(
            "{}{}{}{}",
            &text[..replaced.start],
            promoted,
            &text[replaced.end..removed.0],
            &text[removed.1..]
        )
    } else {
        format!(
            "{}{}{}{}",
            &text[..removed.0],
            &text[removed.1..replaced.start],
            promoted,
            &text[replaced.end..]
        )
    }
}

/// Appends an entry at the end of `agentList`.
pub fn append(file: &AgentsFile, entry: &str) -> Result<String, EditError> {
    let text = &file.text;
    let indent = entry_indent(file);
    let entry = &entry.replace('\n', &format!("\n{indent}"));
    let out = if let Some(range) = &file.agent_list_empty_element {
        let list_indent = line_indent(text, range.start);
        format!(
            "{}<agentList>\n{indent}{entry}\n{list_indent}</agentList>{}",
            &text[..range.start],
            &text[range.end..]
        )
    } else {
        // Insert on its own line just before `</agentList>`.
        let at = file.insert_at;
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        if text[line_start..at].trim().is_empty() {
            format!(
                "{}{indent}{entry}\n{}",
                &text[..line_start],
                &text[line_start..]
            )
        } else {
            format!("{}\n{indent}{entry}\n{}", &text[..at], &text[at..])
        }
    };
    Ok(out)
}

/// Removes an entry, with the line it stands on when it stands alone.
pub fn remove(file: &AgentsFile, entry: &AgentEntry) -> String {
    let (start, end) = whole_lines(&file.text, entry.span.clone());
    format!("{}{}", &file.text[..start], &file.text[end..])
}

/// Sets `enabled`.
pub fn set_enabled(file: &AgentsFile, entry: &AgentEntry, enabled: bool) -> String {
    let range = entry.enabled_value.clone();
    format!(
        "{}{}{}",
        &file.text[..range.start],
        if enabled { "true" } else { "false" },
        &file.text[range.end..]
    )
}

/// Moves an entry to `priority` (1 = first).
pub fn move_to(
    file: &AgentsFile,
    entry: &AgentEntry,
    priority: usize,
) -> Result<String, EditError> {
    let count = file.agents.len();
    if priority == 0 || priority > count {
        return Err(EditError::BadPriority(priority, count));
    }
    let (start, end) = whole_lines(&file.text, entry.span.clone());
    let moved = file.text[start..end].to_string();
    let moved = if moved.ends_with('\n') {
        moved
    } else {
        format!("{moved}\n")
    };
    let without = format!("{}{}", &file.text[..start], &file.text[end..]);
    let reparsed = file::parse(&file.path, without.clone())
        .map_err(|d| EditError::Invalid(crate::agents::diagnostic::render(&d)))?;
    let others = &reparsed.agents;
    let at = if priority - 1 < others.len() {
        whole_lines(&without, others[priority - 1].span.clone()).0
    } else if let Some(last) = others.last() {
        whole_lines(&without, last.span.clone()).1
    } else {
        without[..reparsed.insert_at]
            .rfind('\n')
            .map_or(0, |i| i + 1)
    };
    Ok(format!("{}{}{}", &without[..at], moved, &without[at..]))
}

/// Checks that `text` parses, then writes it atomically.
pub fn commit(path: &Path, text: String) -> Result<AgentsFile, EditError> {
    let parsed = file::parse(path, text.clone())
        .map_err(|d| EditError::Invalid(crate::agents::diagnostic::render(&d)))?;
    crate::fsutil::write_atomic(path, text.as_bytes())?;
    Ok(parsed)
}

fn escape(value: &str) -> String {
    quick_xml::escape::escape(value).into_owned()
}

/// Extends a byte range to whole lines when only whitespace shares them.
fn whole_lines(text: &str, range: std::ops::Range<usize>) -> (usize, usize) {
    let line_start = text[..range.start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[range.end..]
        .find('\n')
        .map_or(text.len(), |i| range.end + i + 1);
    let alone = text[line_start..range.start].trim().is_empty()
        && text[range.end..line_end].trim().is_empty();
    if alone {
        (line_start, line_end)
    } else {
        (range.start, range.end)
    }
}

fn line_indent(text: &str, at: usize) -> String {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    text[line_start..at]
        .chars()
        .take_while(|c| c.is_whitespace())
        .collect()
}

fn entry_indent(file: &AgentsFile) -> String {
    match file.agents.last() {
        Some(last) => line_indent(&file.text, last.span.start),
        None => {
            let at = file
                .agent_list_empty_element
                .as_ref()
                .map_or(file.insert_at, |r| r.start);
            format!("{}  ", line_indent(&file.text, at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(text: &str) -> AgentsFile {
        file::parse(&PathBuf::from("/etc/mta/agents.config"), text.to_string()).unwrap()
    }

    const TWO: &str = r#"<configuration>
  <mexRuntime>
    <monitoring><agentExecution timeLimitInMilliseconds="1000" /></monitoring>
    <agentList>
      <!-- keep me -->
      <agent name="A" baseType="SmtpReceiveAgent" classFactory="F" assemblyPath="a.so" enabled="true" vendor="x" />
      <agent name="B" baseType="RoutingAgent" classFactory="G" assemblyPath="b.so" enabled="false">
        <parameter name="p" value="1" />
      </agent>
    </agentList>
  </mexRuntime>
</configuration>
"#;

    #[test]
    fn append_keeps_comments_and_goes_last() {
        let f = parse(TWO);
        let text = append(
            &f,
            &entry_xml(
                "C",
                AgentClass::Delivery,
                "H",
                "c.so",
                &[("url".into(), "http://x/".into())],
            ),
        )
        .unwrap();
        let g = parse(&text);
        let names: Vec<_> = g.agents.iter().map(|e| e.name.value.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert!(!g.agents[2].enabled.value);
        assert_eq!(
            g.agents[2].parameters,
            [("url".to_string(), "http://x/".to_string())]
        );
        assert!(text.contains("<!-- keep me -->") && text.contains(r#"vendor="x""#));
    }

    #[test]
    fn append_into_empty_element_list() {
        let f = parse(
            r#"<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds="5"/></monitoring><agentList /></mexRuntime></configuration>"#,
        );
        let text = append(&f, &entry_xml("C", AgentClass::Routing, "H", "c.so", &[])).unwrap();
        assert_eq!(parse(&text).agents.len(), 1);
    }

    #[test]
    fn enable_remove_and_move() {
        let f = parse(TWO);
        let text = set_enabled(&f, &f.agents[1], true);
        assert!(parse(&text).agents[1].enabled.value);

        let text = remove(&f, &f.agents[0]);
        let g = parse(&text);
        assert_eq!(g.agents.len(), 1);
        assert!(text.contains("<!-- keep me -->"));

        let text = move_to(&f, &f.agents[1], 1).unwrap();
        let g = parse(&text);
        let names: Vec<_> = g.agents.iter().map(|e| e.name.value.as_str()).collect();
        assert_eq!(names, ["B", "A"]);
        assert_eq!(g.agents[0].parameters, [("p".to_string(), "1".to_string())]);
        let back = move_to(&g, &g.agents[0], 2).unwrap();
        let names: Vec<_> = parse(&back)
            .agents
            .iter()
            .map(|e| e.name.value.clone())
            .collect();
        assert_eq!(names, ["A", "B"]);
        assert!(move_to(&f, &f.agents[0], 3).is_err());
    }

    #[test]
    fn canary_append_promote_and_rollback() {
        let f = parse(TWO);
        let entry = canary_entry_xml(
            "A.canary",
            AgentClass::SmtpReceive,
            "F2",
            "a2.so",
            &[("p".into(), "2".into())],
            "A",
            10,
            true,
        );
        let g = parse(&append(&f, &entry).unwrap());
        let c = g.agents[2].canary.as_ref().unwrap();
        assert_eq!((c.of.value.as_str(), c.percent.value), ("A", 10));
        assert!(g.agents[2].enabled.value);

        let (current, canary) = find_canary(&g, "A").unwrap();
        assert_eq!(canary.name.value, "A.canary");
        assert_eq!(find_canary(&g, "a.CANARY").unwrap().0.name.value, "A");
        assert!(matches!(find_canary(&g, "B"), Err(EditError::NoCanary(_))));

        let text = promote(&g, current, canary);
        let h = parse(&text);
        let names: Vec<_> = h.agents.iter().map(|e| e.name.value.as_str()).collect();
        assert_eq!(names, ["A", "B"], "{text}");
        assert_eq!(h.agents[0].assembly_raw.value, "a2.so");
        assert_eq!(h.agents[0].factory.value, "F2");
        assert_eq!(h.agents[0].parameters, [("p".to_string(), "2".to_string())]);
        assert!(h.agents[0].canary.is_none());
        assert!(!text.contains("canary"), "{text}");
        assert!(text.contains("<!-- keep me -->"));

        let text = remove(&g, canary);
        assert_eq!(parse(&text).agents.len(), 2);
    }
}
