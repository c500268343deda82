//! The agents file (`agents.config`, `fetagents.config`): Exchange's format, read with positions.
//!
//! ```text
//! configuration > mexRuntime > monitoring, agentList, settings?
//! monitoring > agentExecution @timeLimitInMilliseconds, messageSnapshot? @enabled
//! agentList  > agent* @name @baseType @classFactory @assemblyPath @enabled
//! agent      > parameter* @name @value                       (our extension)
//!              @canaryOf @canary                             (our extension: canary rollout)
//! settings   > disposeAgents?
//! ```
//!
//! This module only reads and checks what the file says by itself; whether the libraries load and
//! what their factories are is checked when the pipeline is built. Every problem is reported as a
//! [`Diagnostic`] with file, line and column. Unknown attributes are kept (and ignored), as are
//! comments, so that the management commands can edit the file without losing them.

use crate::agents::diagnostic::{Diagnostic, Located, Position};
use mta_agent_sdk::AgentClass;
use quick_xml::events::{BytesStart, Event as Xml};
use quick_xml::Reader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A parsed agents file.
#[derive(Clone, Debug)]
pub struct AgentsFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The file's text, kept for edits and for positions.
    pub text: String,
    /// `agentExecution@timeLimitInMilliseconds`.
    pub time_limit: Duration,
    /// `messageSnapshot@enabled`: trace agents' changes to messages.
    pub message_snapshot: bool,
    /// `settings/disposeAgents`.
    pub dispose_agents: bool,
    /// The entries, in file order: position 1 is the highest priority.
    pub agents: Vec<AgentEntry>,
    /// Byte offset just before `</agentList>` (or the `<agentList/>` tag), where new entries go.
    pub insert_at: usize,
    /// Whether `agentList` is written as an empty element `<agentList />`.
    pub agent_list_empty_element: Option<Range<usize>>,
}

/// One `<agent>` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentEntry {
    /// `name`.
    pub name: Located<String>,
    /// `baseType`, parsed.
    pub class: Located<AgentClass>,
    /// `classFactory`.
    pub factory: Located<String>,
    /// `assemblyPath` as written.
    pub assembly_raw: Located<String>,
    /// `assemblyPath` resolved against the file's directory.
    pub assembly: PathBuf,
    /// `enabled`.
    pub enabled: Located<bool>,
    /// `<parameter>` children, in order.
    pub parameters: Vec<(String, String)>,
    /// Where the entry's `<agent` starts.
    pub at: Located<()>,
    /// Bytes of the whole element, for edits.
    pub span: Range<usize>,
    /// Bytes of the `enabled` attribute's value, for edits.
    pub enabled_value: Range<usize>,
    /// `canaryOf` and `canary`: this entry is a canary of the entry named, serving that
    /// percentage of new sessions or mail items beside it. Both or neither (checked).
    pub canary: Option<Canary>,
}

/// The canary attributes of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canary {
    /// `canaryOf`: the name of the entry it is a canary of.
    pub of: Located<String>,
    /// `canary`: the percentage of new sessions or mail items it serves, 0 to 100.
    pub percent: Located<u32>,
    /// Bytes of the two attributes (with their leading space) and of the `name` value, so that
    /// `mta agent promote` can drop the former and rename the entry.
    pub attributes: Vec<Range<usize>>,
    /// Bytes of the `name` attribute's value.
    pub name_value: Range<usize>,
}

impl AgentEntry {
    /// 1-based priority: position in `agentList`.
    pub fn priority(&self, file: &AgentsFile) -> usize {
        file.agents
            .iter()
            .position(|e| std::ptr::eq(e, self))
            .map_or(0, |i| i + 1)
    }
}

const TIME_LIMIT_DEFAULT: Duration = Duration::from_secs(300);

/// Reads and parses a file. Errors are positioned diagnostics.
pub fn read(path: &Path) -> Result<AgentsFile, Vec<Diagnostic>> {
    parse(path, read_text(path)?)
}

/// The text of the agents file at `path`, once its modes pass StrictModes.
pub fn read_text(path: &Path) -> Result<String, Vec<Diagnostic>> {
    crate::agents::strict_modes::check(path, "the agents file")
        .map_err(|why| vec![Diagnostic::file(path, why)])?;
    std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic::file(
            path,
            format!("cannot read the agents file: {e}"),
        )]
    })
}

/// Parses `text`, read from `path`.
pub fn parse(path: &Path, text: String) -> Result<AgentsFile, Vec<Diagnostic>> {
    Parser::new(path, &text).run().map(|parsed| AgentsFile {
        path: path.to_path_buf(),
        time_limit: parsed.time_limit.unwrap_or(TIME_LIMIT_DEFAULT),
        message_snapshot: parsed.message_snapshot,
        dispose_agents: parsed.dispose_agents,
        agents: parsed.agents,
        insert_at: parsed.insert_at,
        agent_list_empty_element: parsed.agent_list_empty_element,
        text,
    })
}

#[derive(Default)]
struct Parsed {
    time_limit: Option<Duration>,
    message_snapshot: bool,
    dispose_agents: bool,
    agents: Vec<AgentEntry>,
    insert_at: usize,
    agent_list_empty_element: Option<Range<usize>>,
}

struct Parser<'a> {
    path: &'a Path,
    text: &'a str,
    dir: PathBuf,
    errors: Vec<Diagnostic>,
    out: Parsed,
}

/// What may appear under each element: the schema, as data.
fn children(parent: &str) -> &'static [&'static str] {
    match parent {
        "" => &["configuration"],
        "configuration" => &["mexRuntime"],
        "mexRuntime" => &["monitoring", "agentList", "settings"],
        "monitoring" => &["agentExecution", "messageSnapshot"],
        "agentList" => &["agent"],
        "agent" => &["parameter"],
        "settings" => &["disposeAgents"],
        _ => &[],
    }
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            path,
            text,
            dir,
            errors: Vec::new(),
            out: Parsed::default(),
        }
    }

    fn error(&mut self, offset: usize, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::at(self.path, self.text, offset, message.into()));
    }

    fn offset_of(&self, slice: &[u8]) -> Option<usize> {
        let start = self.text.as_ptr() as usize;
        let p = slice.as_ptr() as usize;
        (p >= start && p <= start + self.text.len()).then(|| p - start)
    }

    fn run(mut self) -> Result<Parsed, Vec<Diagnostic>> {
        let mut reader = Reader::from_str(self.text);
        reader.config_mut().check_end_names = true;
        let mut stack: Vec<String> = Vec::new();
        let mut seen: Vec<(usize, String)> = Vec::new(); // (depth, name) of singletons seen
        let mut current_agent: Option<AgentEntry> = None;
        let mut dispose_text_at: Option<usize> = None;
        let mut found = |depth: usize, name: &str| {
            let key = (depth, name.to_string());
            let again = seen.contains(&key);
            seen.push(key);
            again
        };
        loop {
            let before = reader.buffer_position() as usize;
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    let offset = reader.error_position() as usize;
                    self.error(offset, format!("malformed XML: {e}"));
                    return Err(self.errors);
                }
            };
            let after = reader.buffer_position() as usize;
            // The '<' of a tag: skip the whitespace the reader may have consumed before it.
            let tag_at = before + self.text[before..after].find('<').unwrap_or(0);
            match event {
                Xml::Start(ref tag) | Xml::Empty(ref tag) => {
                    let empty = matches!(event, Xml::Empty(_));
                    let name = tag.name().as_ref().to_string();
                    let parent = stack.last().map(String::as_str).unwrap_or("");
                    if !children(parent).contains(&name.as_str()) {
                        let expected = children(parent);
                        let msg = if expected.is_empty() {
                            format!("unexpected element <{name}>: <{parent}> has no child elements")
                        } else {
                            format!(
                                "unknown element <{name}> in {}: expected {}",
                                if parent.is_empty() {
                                    "the document".to_string()
                                } else {
                                    format!("<{parent}>")
                                },
                                expected
                                    .iter()
                                    .map(|e| format!("<{e}>"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        self.error(tag_at, msg);
                        if !empty {
                            // Skip the unknown subtree.
                            let end = tag.to_end().into_owned();
                            if let Err(e) = reader.read_to_end(end.name()) {
                                let offset = reader.error_position() as usize;
                                self.error(offset, format!("malformed XML: {e}"));
                                return Err(self.errors);
                            }
                        }
                        continue;
                    }
                    let singleton = name != "agent" && name != "parameter";
                    if singleton && found(stack.len(), &name) {
                        self.error(tag_at, format!("<{name}> appears twice; expected it once"));
                    }
                    match name.as_str() {
                        "agentExecution" => self.agent_execution(tag, tag_at),
                        "messageSnapshot" => {
                            if let Some((v, at)) = self.attr(tag, "enabled", tag_at, true) {
                                self.out.message_snapshot =
                                    self.boolean(&v, at, "enabled").unwrap_or(false);
                            }
                        }
                        "agentList" if empty => {
                            self.out.insert_at = tag_at;
                            self.out.agent_list_empty_element = Some(tag_at..after);
                        }
                        "agent" => {
                            let entry = self.agent(tag, tag_at, after);
                            if empty {
                                if let Some(e) = entry {
                                    self.out.agents.push(e);
                                }
                            } else {
                                current_agent = entry;
                            }
                        }
                        "parameter" => {
                            let name = self.attr(tag, "name", tag_at, true);
                            let value = self.attr(tag, "value", tag_at, true);
                            if let (Some((n, _)), Some((v, _)), Some(agent)) =
                                (name, value, current_agent.as_mut())
                            {
                                agent.parameters.push((n, v));
                            }
                        }
                        "disposeAgents" => dispose_text_at = Some(after),
                        _ => {}
                    }
                    if !empty {
                        stack.push(name);
                    }
                }
                Xml::End(ref tag) => {
                    let name = tag.name().as_ref().to_string();
                    match name.as_str() {
                        "agent" => {
                            if let Some(mut entry) = current_agent.take() {
                                entry.span.end = after;
                                self.out.agents.push(entry);
                            }
                        }
                        "agentList" => self.out.insert_at = tag_at,
                        _ => {}
                    }
                    stack.pop();
                }
                Xml::Text(ref text) => {
                    if stack.last().map(String::as_str) == Some("disposeAgents") {
                        let value = text.as_ref().trim().to_string();
                        let at = dispose_text_at.unwrap_or(before);
                        if let Some(v) = self.boolean(&value, at, "disposeAgents") {
                            self.out.dispose_agents = v;
                        }
                    } else if !text.as_ref().trim().is_empty() {
                        let where_ = stack.last().cloned().unwrap_or_default();
                        self.error(
                            before,
                            format!("unexpected text in <{where_}>: expected only elements"),
                        );
                    }
                }
                Xml::Eof => break,
                _ => {}
            }
        }
        let has = |name: &str| seen.iter().any(|(_, n)| n == name);
        if !has("configuration") {
            self.error(
                0,
                "no <configuration> element: expected <configuration><mexRuntime>...",
            );
        } else if !has("mexRuntime") {
            self.error(0, "no <mexRuntime> element in <configuration>");
        } else {
            if !has("agentList") {
                self.error(0, "no <agentList> element in <mexRuntime>");
            }
            if !has("monitoring") || !has("agentExecution") {
                self.error(
                    0,
                    "no <monitoring><agentExecution timeLimitInMilliseconds=\"...\"/></monitoring> in <mexRuntime>",
                );
            }
        }
        self.check_names();
        if self.errors.is_empty() {
            self.check_canaries();
        }
        if self.errors.is_empty() {
            Ok(self.out)
        } else {
            Err(self.errors)
        }
    }

    /// The value of a required (or optional) attribute and the offset of its value.
    fn attr(
        &mut self,
        tag: &BytesStart<'_>,
        name: &str,
        tag_at: usize,
        required: bool,
    ) -> Option<(String, usize)> {
        for attr in tag.attributes() {
            let attr = match attr {
                Ok(a) => a,
                Err(e) => {
                    self.error(tag_at, format!("malformed attribute: {e}"));
                    return None;
                }
            };
            if attr.key.as_ref() == name {
                let at = self.offset_of(attr.value.as_bytes()).unwrap_or(tag_at);
                return match attr.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
                    Ok(v) => Some((v.into_owned(), at)),
                    Err(e) => {
                        self.error(at, format!("attribute {name}: {e}"));
                        None
                    }
                };
            }
        }
        if required {
            let element = tag.name().as_ref().to_string();
            self.error(
                tag_at,
                format!("<{element}> lacks the required attribute {name}=\"...\""),
            );
        }
        None
    }

    fn boolean(&mut self, value: &str, at: usize, what: &str) -> Option<bool> {
        match value {
            "true" | "True" | "TRUE" | "1" => Some(true),
            "false" | "False" | "FALSE" | "0" => Some(false),
            _ => {
                self.error(
                    at,
                    format!("{what}=\"{value}\" is not a boolean: expected true or false"),
                );
                None
            }
        }
    }

    fn agent_execution(&mut self, tag: &BytesStart<'_>, tag_at: usize) {
        if let Some((v, at)) = self.attr(tag, "timeLimitInMilliseconds", tag_at, true) {
            match v.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => self.out.time_limit = Some(Duration::from_millis(ms)),
                _ => self.error(
                    at,
                    format!("timeLimitInMilliseconds=\"{v}\" is not valid: expected a whole number of milliseconds above 0"),
                ),
            }
        }
    }

    fn agent(&mut self, tag: &BytesStart<'_>, tag_at: usize, tag_end: usize) -> Option<AgentEntry> {
        let name = self.attr(tag, "name", tag_at, true);
        let base_type = self.attr(tag, "baseType", tag_at, true);
        let factory = self.attr(tag, "classFactory", tag_at, true);
        let assembly = self.attr(tag, "assemblyPath", tag_at, true);
        let enabled = self.attr(tag, "enabled", tag_at, true);
        let (name, base_type, factory, assembly, enabled) =
            (name?, base_type?, factory?, assembly?, enabled?);

        let class = match AgentClass::from_base_type(&base_type.0) {
            Some(c) => c,
            None => {
                self.error(
                    base_type.1,
                    format!(
                        "baseType=\"{}\" is not an agent class: expected one of {}",
                        base_type.0,
                        AgentClass::ALL
                            .iter()
                            .map(|c| format!("{} ({})", c.short_name(), c.exchange_name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                return None;
            }
        };
        if factory.0.trim().is_empty() {
            self.error(
                factory.1,
                "classFactory is empty: expected the name of a factory exported by the library",
            );
        }
        if assembly.0.trim().is_empty() {
            self.error(
                assembly.1,
                "assemblyPath is empty: expected the path of the agent library",
            );
        }
        let enabled_value = enabled.1..enabled.1 + raw_len(self.text, enabled.1);
        let enabled_bool = self.boolean(&enabled.0, enabled.1, "enabled")?;
        let canary = self.canary(tag, tag_at, name.1);
        let resolved = {
            let p = PathBuf::from(&assembly.0);
            if p.is_absolute() {
                p
            } else {
                self.dir.join(p)
            }
        };
        let (path, text) = (self.path, self.text);
        fn loc<T>(path: &Path, text: &str, v: T, at: usize) -> Located<T> {
            Located::new(v, Position::at(path, text, at))
        }
        Some(AgentEntry {
            name: loc(path, text, name.0, name.1),
            class: loc(path, text, class, base_type.1),
            factory: loc(path, text, factory.0, factory.1),
            assembly_raw: loc(path, text, assembly.0, assembly.1),
            assembly: resolved,
            enabled: loc(path, text, enabled_bool, enabled.1),
            parameters: Vec::new(),
            at: loc(path, text, (), tag_at),
            span: tag_at..tag_end,
            enabled_value,
            canary,
        })
    }

    /// `canaryOf` and `canary`: both or neither; the percentage a whole number from 0 to 100.
    /// Whether `canaryOf` names a suitable entry is checked once all entries are read.
    fn canary(&mut self, tag: &BytesStart<'_>, tag_at: usize, name_at: usize) -> Option<Canary> {
        let of = self.attr(tag, "canaryOf", tag_at, false);
        let percent = self.attr(tag, "canary", tag_at, false);
        let (of, percent) = match (of, percent) {
            (None, None) => return None,
            (Some(of), Some(percent)) => (of, percent),
            (Some((_, at)), None) => {
                self.error(at, "canaryOf=\"...\" without canary=\"PERCENT\": expected both, e.g. canary=\"10\" for 10 % of new sessions or mail items");
                return None;
            }
            (None, Some((_, at))) => {
                self.error(at, "canary=\"...\" without canaryOf=\"NAME\": expected the name of the agent this entry is a canary of");
                return None;
            }
        };
        let value = match percent.0.trim().trim_end_matches('%').parse::<u32>() {
            Ok(v) if v <= 100 => v,
            _ => {
                self.error(
                    percent.1,
                    format!(
                        "canary=\"{}\" is not valid: expected a whole percentage from 0 to 100",
                        percent.0
                    ),
                );
                return None;
            }
        };
        let (path, text) = (self.path, self.text);
        Some(Canary {
            attributes: vec![attribute_span(text, of.1), attribute_span(text, percent.1)],
            of: Located::new(of.0, Position::at(path, text, of.1)),
            percent: Located::new(value, Position::at(path, text, percent.1)),
            name_value: name_at..name_at + raw_len(text, name_at),
        })
    }

    /// A canary names an enabled-or-not entry of the same class that is not itself a canary,
    /// and an entry has at most one canary: anything else would make the share ambiguous.
    fn check_canaries(&mut self) {
        let mut problems = Vec::new();
        for (i, entry) in self.out.agents.iter().enumerate() {
            let Some(canary) = &entry.canary else {
                continue;
            };
            let of = &canary.of.value;
            let target = self
                .out
                .agents
                .iter()
                .find(|e| e.name.value.eq_ignore_ascii_case(of));
            let problem = match target {
                None => Some(format!("canaryOf=\"{of}\": no agent of that name in this file")),
                Some(t) if std::ptr::eq(t, entry) => {
                    Some(format!("canaryOf=\"{of}\": an agent cannot be a canary of itself"))
                }
                Some(t) if t.canary.is_some() => Some(format!(
                    "canaryOf=\"{of}\": agent {:?} is itself a canary; name the agent it is a canary of",
                    t.name.value
                )),
                Some(t) if t.class.value != entry.class.value => Some(format!(
                    "canaryOf=\"{of}\": agent {:?} is a {}, this entry a {}; a canary is of the same class",
                    t.name.value, t.class.value, entry.class.value
                )),
                Some(_) => self.out.agents[..i]
                    .iter()
                    .find(|e| {
                        e.canary
                            .as_ref()
                            .is_some_and(|c| c.of.value.eq_ignore_ascii_case(of))
                    })
                    .map(|first| {
                        format!(
                            "canaryOf=\"{of}\": agent {:?} at line {} is already its canary (one canary per agent)",
                            first.name.value, first.name.at.line
                        )
                    }),
            };
            if let Some(message) = problem {
                problems.push((canary.of.at.clone(), message));
            }
        }
        for (position, message) in problems {
            self.errors.push(Diagnostic::new(&position, message));
        }
    }

    /// Names: 1 to 64 letters, digits, space, `.`, `_`, `-`; unique ignoring case.
    fn check_names(&mut self) {
        let mut problems = Vec::new();
        for (i, entry) in self.out.agents.iter().enumerate() {
            let name = &entry.name.value;
            let valid_chars = name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-'));
            if name.is_empty() || name.chars().count() > 64 || !valid_chars {
                problems.push((
                    entry.name.at.clone(),
                    format!("agent name {name:?} is not valid: expected 1 to 64 characters of letters, digits, space, '.', '_' or '-'"),
                ));
            }
            if let Some(first) = self.out.agents[..i]
                .iter()
                .find(|e| e.name.value.to_lowercase() == name.to_lowercase())
            {
                problems.push((
                    entry.name.at.clone(),
                    format!(
                        "agent name {name:?} is already used at line {} (names are unique ignoring case)",
                        first.name.at.line
                    ),
                ));
            }
        }
        for (position, message) in problems {
            self.errors.push(Diagnostic::new(&position, message));
        }
    }
}

/// Bytes of a whole attribute, ` name="value"` with its leading whitespace, from the offset of
/// its value.
fn attribute_span(text: &str, value_at: usize) -> Range<usize> {
    let end = value_at + raw_len(text, value_at) + 1;
    let before = text[..value_at.saturating_sub(1)].trim_end();
    let before = before.strip_suffix('=').unwrap_or(before).trim_end();
    let name_start = before
        .rfind(|c: char| c.is_whitespace())
        .map_or(0, |i| i + 1);
    let start = text[..name_start].trim_end().len();
    start..end.min(text.len())
}

/// Length of an attribute value starting at `at` (up to the closing quote).
fn raw_len(text: &str, at: usize) -> usize {
    let quote_at = at
        .checked_sub(1)
        .and_then(|q| text.as_bytes().get(q))
        .copied();
    let quote = match quote_at {
        Some(b'"') | Some(b'\'') => quote_at.unwrap(),
        _ => b'"',
    };
    text.as_bytes()[at..]
        .iter()
        .position(|&b| b == quote)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(agents: &str) -> Vec<String> {
        let text = format!(
            "<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds=\"5\"/></monitoring><agentList>\n{agents}\n</agentList></mexRuntime></configuration>"
        );
        match parse(Path::new("/etc/mta/agents.config"), text) {
            Ok(_) => Vec::new(),
            Err(d) => d.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn entry(name: &str, class: &str, extra: &str) -> String {
        format!(
            r#"<agent name="{name}" baseType="{class}" classFactory="F" assemblyPath="a.so" enabled="true"{extra} />"#
        )
    }

    #[test]
    fn canary_attributes_are_checked_at_their_position() {
        let a = entry("A", "SmtpReceiveAgent", "");
        let ok = entry("B", "SmtpReceiveAgent", r#" canaryOf="a" canary="10%""#);
        assert_eq!(errors(&format!("{a}\n{ok}")), Vec::<String>::new());
        let text = format!("{a}\n{ok}");
        let parsed = parse(
            Path::new("/x"),
            format!("<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds=\"5\"/></monitoring><agentList>{text}</agentList></mexRuntime></configuration>"),
        )
        .unwrap();
        let c = parsed.agents[1].canary.as_ref().unwrap();
        assert_eq!((c.of.value.as_str(), c.percent.value), ("a", 10));
        assert!(parsed.agents[0].canary.is_none());

        let cases = [
            (
                entry("B", "SmtpReceiveAgent", r#" canary="10""#),
                "canary=\"...\" without canaryOf",
            ),
            (
                entry("B", "SmtpReceiveAgent", r#" canaryOf="A""#),
                "canaryOf=\"...\" without canary",
            ),
            (
                entry("B", "SmtpReceiveAgent", r#" canaryOf="A" canary="101""#),
                "canary=\"101\" is not valid",
            ),
            (
                entry("B", "SmtpReceiveAgent", r#" canaryOf="B" canary="5""#),
                "cannot be a canary of itself",
            ),
            (
                entry("B", "RoutingAgent", r#" canaryOf="A" canary="5""#),
                "a canary is of the same class",
            ),
            (
                format!(
                    "{ok}\n{}",
                    entry("C", "SmtpReceiveAgent", r#" canaryOf="B" canary="5""#)
                ),
                "is itself a canary",
            ),
            (
                format!(
                    "{ok}\n{}",
                    entry("C", "SmtpReceiveAgent", r#" canaryOf="A" canary="5""#)
                ),
                "is already its canary (one canary per agent)",
            ),
        ];
        for (entries, expected) in cases {
            let got = errors(&format!("{a}\n{entries}"));
            assert!(
                got.len() == 1
                    && got[0].contains(expected)
                    && got[0].starts_with("/etc/mta/agents.config:"),
                "{expected}: {got:?}"
            );
        }
    }
}
