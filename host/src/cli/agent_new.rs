//! `mta agent new`: writes an agent crate that builds, passes `cargo test`, and installs as it is.
//!
//! The point is the shortest road from nothing to an agent running live: `mta agent new`,
//! `cargo build`, `mta agent install` (with `--enable`). Each class gets one handler that does
//! something an operator would recognise, a harness test for it, and the agents.config entry.

use anyhow::{bail, Context};
use mta_agent_sdk::AgentClass;
use std::path::{Path, PathBuf};

/// Where the new crate takes `mta-agent-sdk` from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdkSource {
    /// A registry version (the default when this host was not built from a checkout that is
    /// still there: the SDK version this host was built with).
    Version(String),
    /// A checkout's `agent-sdk/` directory.
    Path(PathBuf),
    /// A git repository at a tag.
    Git { url: String, tag: String },
}

impl SdkSource {
    /// Without `--sdk`: the `agent-sdk/` of the checkout this host was built from, when it is
    /// still there and holds the SDK version the host was built with (an agent written next to
    /// a built checkout builds at once, before any SDK is published), else that version from
    /// the registry.
    pub fn default_for(checkout_sdk: &Path) -> Self {
        let same_version = std::fs::read_to_string(checkout_sdk.join("Cargo.toml"))
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| {
                t.get("package")?
                    .get("version")?
                    .as_str()
                    .map(str::to_string)
            })
            .is_some_and(|v| v == mta_agent_sdk::version::SDK_VERSION);
        if same_version {
            Self::Path(checkout_sdk.to_path_buf())
        } else {
            Self::Version(mta_agent_sdk::version::SDK_VERSION.to_string())
        }
    }

    /// Parses `path:DIR`, `git:URL#TAG` or `version:X.Y.Z`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let bad = || format!("{value:?} is not path:DIR, git:URL#TAG or version:X.Y.Z");
        let (kind, rest) = value.split_once(':').ok_or_else(bad)?;
        match kind {
            "path" if !rest.is_empty() => Ok(Self::Path(PathBuf::from(rest))),
            "git" => {
                let (url, tag) = rest.rsplit_once('#').ok_or_else(bad)?;
                if url.is_empty() || tag.is_empty() {
                    return Err(bad());
                }
                Ok(Self::Git {
                    url: url.to_string(),
                    tag: tag.to_string(),
                })
            }
            "version"
                if rest.split('.').count() == 3
                    && rest.split('.').all(|p| p.parse::<u64>().is_ok()) =>
            {
                Ok(Self::Version(rest.to_string()))
            }
            _ => Err(bad()),
        }
    }

    /// The right-hand side of `mta-agent-sdk = ...` in Cargo.toml.
    fn dependency(&self) -> anyhow::Result<String> {
        Ok(match self {
            Self::Version(v) => format!("\"{v}\""),
            Self::Path(dir) => {
                let dir = std::path::absolute(dir).context("resolving the SDK's path")?;
                if !dir.join("Cargo.toml").is_file() {
                    bail!(
                        "{} has no Cargo.toml: --sdk path: names the SDK's directory (agent-sdk/ of an mta checkout)",
                        dir.display()
                    );
                }
                format!("{{ path = {} }}", toml_string(&dir.display().to_string()))
            }
            Self::Git { url, tag } => {
                format!(
                    "{{ git = {}, tag = {} }}",
                    toml_string(url),
                    toml_string(tag)
                )
            }
        })
    }
}

/// `--class`'s name of a class.
fn class_name(class: AgentClass) -> &'static str {
    match class {
        AgentClass::SmtpReceive => "smtp-receive",
        AgentClass::Routing => "routing",
        AgentClass::Delivery => "delivery",
    }
}

/// Parses `--class`.
pub fn parse_class(value: &str) -> Result<AgentClass, String> {
    match value {
        "smtp-receive" => Ok(AgentClass::SmtpReceive),
        "routing" => Ok(AgentClass::Routing),
        "delivery" => Ok(AgentClass::Delivery),
        _ => Err(format!(
            "unknown class {value:?}: expected smtp-receive, routing or delivery"
        )),
    }
}

/// The names one NAME gives: crate, Rust type, factory, agent and library file.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    /// `block-spam`.
    krate: String,
    /// `BlockSpam`.
    ty: String,
    /// `Custom.BlockSpamFactory`.
    factory: String,
    /// The agent's name in agents.config: NAME itself when it is a valid agent name.
    agent: String,
    /// `libblock_spam.so`.
    library: String,
}

impl Names {
    fn of(name: &str) -> anyhow::Result<Self> {
        // Words of letters and digits: "Block Spam!" -> ["block", "spam"].
        let words: Vec<String> = name
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_lowercase)
            .collect();
        if words.is_empty() {
            bail!("{name:?} has no letters or digits to make a crate name of");
        }
        let mut krate = words.join("-");
        // A crate name starts with a letter, and must not be a Rust keyword's or `test`'s.
        if !krate.starts_with(|c: char| c.is_ascii_alphabetic())
            || [
                "test",
                "core",
                "std",
                "alloc",
                "proc-macro",
                "self",
                "crate",
            ]
            .contains(&krate.as_str())
        {
            krate = format!("agent-{krate}");
        }
        let ty: String = krate
            .split('-')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        let valid_agent_name = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " ._-".contains(c));
        Ok(Self {
            factory: format!("Custom.{ty}Factory"),
            agent: if valid_agent_name {
                name.to_string()
            } else {
                krate.clone()
            },
            library: format!("lib{}.so", krate.replace('-', "_")),
            ty,
            krate,
        })
    }
}

/// The `agent-sdk/` of the checkout this binary was built from.
fn built_from() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("/"))
        .join("agent-sdk")
}

/// Writes the crate for NAME, then prints its files and the commands that build and install it.
pub fn run(
    name: &str,
    class: AgentClass,
    path: Option<&Path>,
    sdk: Option<SdkSource>,
) -> anyhow::Result<()> {
    let names = Names::of(name)?;
    let dir = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(&names.krate));
    let defaulted = sdk.is_none();
    let sdk = sdk.unwrap_or_else(|| SdkSource::default_for(&built_from()));
    if let SdkSource::Version(v) = &sdk {
        if !mta_agent_sdk::version::compatible(mta_agent_sdk::version::SDK_VERSION, v) {
            bail!(
                "this host uses mta-agent-sdk {} and would refuse an agent built against {v} (the SDK's version rule: {})",
                mta_agent_sdk::version::SDK_VERSION,
                mta_agent_sdk::version::RULE
            );
        }
    }
    // Never into something that exists: a typo must not mix a new crate into someone's files.
    if std::fs::symlink_metadata(&dir).is_ok() {
        bail!(
            "{} already exists: mta agent new writes a new directory only (choose another NAME or --path)",
            dir.display()
        );
    }
    let files = files(&names, class, &sdk.dependency()?);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // create_dir, not create_dir_all: it fails if the directory appeared since the check.
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir(dir.join("src"))
        .with_context(|| format!("creating {}", dir.join("src").display()))?;
    for (rel, text) in &files {
        std::fs::write(dir.join(rel), text)
            .with_context(|| format!("writing {}", dir.join(rel).display()))?;
    }
    let shown = dir.display();
    println!(
        "Created the {} agent {:?} in {shown}: crate {}, factory {}.",
        class_name(class),
        names.agent,
        names.krate,
        names.factory
    );
    for (rel, _) in &files {
        println!("  {shown}/{rel}");
    }
    if let (true, SdkSource::Path(dir)) = (defaulted, &sdk) {
        println!(
            "It takes mta-agent-sdk from the checkout this mta was built from ({}); --sdk chooses another source.",
            dir.display()
        );
    }
    // Paths from where the command ran, so all three commands run in one directory (the
    // server's, where mta.toml is).
    let manifest = shell_word(&dir.join("Cargo.toml").display().to_string());
    let library = dir.join("target/debug").join(&names.library);
    println!("Next, from this directory: build it, then install it into the agents file:");
    println!("  cargo build --manifest-path {manifest}");
    println!(
        "  {}",
        install_command(&names, class, &library.display().to_string())
    );
    println!("(`cargo test --manifest-path {manifest}` runs its tests.)");
    Ok(())
}

/// The parameters each class's template reads, with the values the snippet and the install
/// command give them.
fn parameters(class: AgentClass) -> &'static [(&'static str, &'static str)] {
    match class {
        AgentClass::SmtpReceive => &[("domain", "spam.test")],
        AgentClass::Routing => &[("header", "X-Routed-By"), ("value", "mta")],
        AgentClass::Delivery => &[("directory", "/var/spool/mta-delivered")],
    }
}

fn install_command(names: &Names, class: AgentClass, library: &str) -> String {
    let mut out = format!(
        "mta agent install --enable --name {} --factory {} --assembly {}",
        shell_word(&names.agent),
        names.factory,
        shell_word(library)
    );
    for (n, v) in parameters(class) {
        out.push_str(&format!(" --parameter {n}={v}"));
    }
    out
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Every file of the crate, by path relative to its directory.
fn files(names: &Names, class: AgentClass, dependency: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Cargo.toml", cargo_toml(names, dependency)),
        ("src/lib.rs", lib_rs(names, class)),
        ("agent.xml", agent_xml(names, class)),
        ("README.md", readme(names, class)),
        (".gitignore", "/target\n".to_string()),
    ]
}

fn cargo_toml(names: &Names, dependency: &str) -> String {
    format!(
        r#"[package]
name = "{krate}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the library mta loads. rlib: lets tests under tests/ link the crate.
crate-type = ["cdylib", "rlib"]

[dependencies]
mta-agent-sdk = {dependency}

# The SDK turns a panic in the agent into a fault (the host fails only what the agent was doing)
# by unwinding: never set panic = "abort".
[profile.dev]
panic = "unwind"

[profile.release]
panic = "unwind"

# A workspace of its own, so the crate builds wherever it was created (even inside another
# workspace's directory). Remove this table to make it a member of an enclosing workspace.
[workspace]
"#,
        krate = names.krate
    )
}

fn lib_rs(names: &Names, class: AgentClass) -> String {
    let template = match class {
        AgentClass::SmtpReceive => SMTP_RECEIVE,
        AgentClass::Routing => ROUTING,
        AgentClass::Delivery => DELIVERY,
    };
    template
        .replace("__TYPE__", &names.ty)
        .replace("__FACTORY__", &names.factory)
        .replace("__CRATE__", &names.krate)
        .replace(
            "__PROTOCOL__",
            &names.krate.to_ascii_uppercase().replace('-', "_"),
        )
}

fn agent_xml(names: &Names, class: AgentClass) -> String {
    let mut out = format!(
        "<!-- Paste into the agentList of agents.config; assemblyPath is relative to that file,\n     so make it absolute or relative to where agents.config is. -->\n<agent name=\"{}\"\n       baseType=\"{}\"\n       classFactory=\"{}\"\n       assemblyPath=\"target/debug/{}\"\n       enabled=\"true\">\n",
        xml_escape(&names.agent),
        class.exchange_name(),
        names.factory,
        names.library
    );
    for (n, v) in parameters(class) {
        out.push_str(&format!("  <parameter name=\"{n}\" value=\"{v}\" />\n"));
    }
    out.push_str("</agent>\n");
    out
}

fn readme(names: &Names, class: AgentClass) -> String {
    let what = match class {
        AgentClass::SmtpReceive => {
            "An SMTP receive agent: it refuses mail whose envelope sender is in the domain given as the `domain` parameter (or a subdomain of it), at MAIL FROM, with `550 5.7.1`."
        }
        AgentClass::Routing => {
            "A routing agent: it adds the header field named by the `header` parameter, with the `value` parameter, to every message at OnSubmittedMessage."
        }
        AgentClass::Delivery => {
            "A delivery agent: it writes each mail item it is given to a file in the `directory` parameter's directory and acknowledges it; a Delivery Agent connector whose deliveryProtocol is this agent's sends it its queue."
        }
    };
    let connector = if class == AgentClass::Delivery {
        format!(
            "\nA delivery agent receives mail only through a Delivery Agent connector with `DeliveryProtocol = \"{}\"` (see `mta connector list`).\n",
            names.krate.to_ascii_uppercase().replace('-', "_")
        )
    } else {
        String::new()
    };
    format!(
        r#"# {krate}

{what}

Factory: `{factory}`. An agent for the mta mail transfer agent, on its SDK `mta-agent-sdk`.

## Build and test

```sh
cargo test
cargo build
```

## Install

Into the agents file of the server whose configuration `mta` finds (`--config FILE`,
`MTA_CONFIG`, or `mta.toml` in the current directory); a running server starts using the agent
without a restart:

```sh
{install}
```

`mta agent install --dry-run target/debug/{library}` checks that this host loads the library
and changes no file. `agent.xml` holds the same entry to paste into agents.config by hand.
{connector}
## Try it on a message

```sh
mta agent try target/debug/{library} --factory {factory} --eml message.eml{params}
```

runs the agent on `message.eml` in a throwaway host and prints what it did and the diff of the
message; `mta` changes no file (what the agent does by itself is real).
"#,
        krate = names.krate,
        factory = names.factory,
        library = names.library,
        install = install_command(names, class, &format!("target/debug/{}", names.library)),
        params = parameters(class)
            .iter()
            .map(|(n, v)| format!(" --parameter {n}={v}"))
            .collect::<String>(),
    )
}

const SMTP_RECEIVE: &str = r#"//! An SMTP receive agent: refuses mail from one sender domain at MAIL FROM.
//!
//! Parameters (the `<parameter>` children of the agent's entry in agents.config):
//! - `domain`: the sender domain refused, with its subdomains (default `spam.test`).

use mta_agent_sdk::prelude::*;

/// The agent. The host clones it for every SMTP session.
#[derive(Clone, Debug)]
pub struct __TYPE__ {
    /// The refused domain, lower case.
    domain: String,
}

impl __TYPE__ {
    /// Whether `address` is in the refused domain or one of its subdomains.
    fn refuses(&self, address: &str) -> bool {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let domain = domain.to_ascii_lowercase();
        domain == self.domain || domain.ends_with(&format!(".{}", self.domain))
    }
}

#[agent]
impl SmtpReceiveAgent for __TYPE__ {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let domain = parameters.get_or("domain", "spam.test").trim().to_ascii_lowercase();
        if domain.is_empty() || domain.contains('@') {
            return Err(AgentError::msg(format!(
                "parameter \"domain\": {domain:?} is not a domain"
            )));
        }
        Ok(Self { domain })
    }

    fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
        if self.refuses(&event.from()) {
            event.reject(&SmtpResponse::new(550, "5.7.1", "Sender domain refused")?)?;
        }
        Ok(())
    }
}

export_agents!("__FACTORY__" => __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost};

    fn mail_from(agent: &mut __TYPE__, from: &str) -> TestHost {
        let mut host = TestHost::smtp("192.0.2.1:5000").with_arg("from", from);
        testing::run(agent, Event::OnMailCommand, &mut host).unwrap();
        host
    }

    #[test]
    fn refuses_the_domain_and_its_subdomains() {
        let mut agent = testing::create::<__TYPE__>(&[("domain", "Spam.Test")]).unwrap();
        for from in ["a@spam.test", "b@mail.SPAM.test"] {
            let host = mail_from(&mut agent, from);
            let reply = host.rejection().expect("rejected");
            assert_eq!((reply.code(), reply.enhanced_code()), (550, "5.7.1"), "{from}");
        }
    }

    #[test]
    fn accepts_other_senders() {
        let mut agent = testing::create::<__TYPE__>(&[("domain", "spam.test")]).unwrap();
        for from in ["a@example.test", "a@notspam.test", ""] {
            assert!(mail_from(&mut agent, from).rejection().is_none(), "{from}");
        }
    }

    #[test]
    fn refuses_a_domain_parameter_that_is_an_address() {
        assert!(testing::create::<__TYPE__>(&[("domain", "a@spam.test")]).is_err());
    }

    #[test]
    fn handles_mail_from_only() {
        assert_eq!(__TYPE__::EVENTS.iter().collect::<Vec<_>>(), [Event::OnMailCommand]);
    }
}
"#;

const ROUTING: &str = r#"//! A routing agent: adds a header field to every message at OnSubmittedMessage.
//!
//! Parameters (the `<parameter>` children of the agent's entry in agents.config):
//! - `header`: the field's name (default `X-Routed-By`);
//! - `value`: its value (default `mta`).

use mta_agent_sdk::prelude::*;

/// The agent. The host clones it for every mail item.
#[derive(Clone, Debug)]
pub struct __TYPE__ {
    header: String,
    value: String,
}

#[agent]
impl RoutingAgent for __TYPE__ {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        let header = parameters.get_or("header", "X-Routed-By").to_string();
        if header.is_empty() || !header.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(AgentError::msg(format!(
                "parameter \"header\": {header:?} is not a header field name"
            )));
        }
        Ok(Self {
            header,
            value: parameters.get_or("value", "mta").to_string(),
        })
    }

    fn on_submitted_message(&mut self, event: &mut SubmittedMessageEvent<'_>) -> AgentResult {
        event.mail_item().add_header(&self.header, &self.value)
    }
}

export_agents!("__FACTORY__" => __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};

    #[test]
    fn adds_the_header_field() {
        let mut agent =
            testing::create::<__TYPE__>(&[("header", "X-Seen"), ("value", "yes")]).unwrap();
        let message = TestMessage::parse(b"Subject: hi\r\n\r\nbody\r\n")
            .with_envelope("a@example.test", &["b@example.test"]);
        let mut host = TestHost::for_message(message);
        testing::run(&mut agent, Event::OnSubmittedMessage, &mut host).unwrap();
        let message = host.message().unwrap();
        assert_eq!(message.header("X-Seen"), Some("yes"));
        assert_eq!(message.header("Subject"), Some("hi"));
        assert_eq!(message.body, b"body\r\n");
    }

    #[test]
    fn refuses_an_invalid_header_name() {
        assert!(testing::create::<__TYPE__>(&[("header", "Bad Name")]).is_err());
    }

    #[test]
    fn handles_on_submitted_message_only() {
        assert_eq!(
            __TYPE__::EVENTS.iter().collect::<Vec<_>>(),
            [Event::OnSubmittedMessage]
        );
    }
}
"#;

const DELIVERY: &str = r#"//! A delivery agent: writes each mail item to a file in a directory and acknowledges it.
//!
//! It serves the queues of Delivery Agent connectors whose delivery protocol is `__PROTOCOL__`.
//!
//! Parameters (the `<parameter>` children of the agent's entry in agents.config):
//! - `directory` (required): where the messages are written, one `.eml` file each.

use mta_agent_sdk::prelude::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The agent. The host clones it for every delivery connection.
#[derive(Clone, Debug)]
pub struct __TYPE__ {
    directory: PathBuf,
    /// Numbers the files of every connection of this factory: shared, so behind an `Arc`.
    written: Arc<AtomicU64>,
}

#[agent]
impl DeliveryAgent for __TYPE__ {
    const DELIVERY_PROTOCOL: &'static str = "__PROTOCOL__";

    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            directory: PathBuf::from(parameters.require("directory")?),
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    fn on_open_connection(&mut self, event: &mut OpenConnectionEvent<'_>) -> AgentResult {
        if !self.directory.is_dir() {
            let why = format!("{} is not a directory", self.directory.display());
            return event.defer_queue(
                std::time::Duration::from_secs(60),
                &SmtpResponse::new(451, "4.4.0", &why)?,
            );
        }
        event.register_connection("__CRATE__", &SmtpResponse::new(250, "2.0.0", "Ready")?)
    }

    fn on_deliver_mail_item(&mut self, event: &mut DeliverMailItemEvent<'_>) -> AgentResult {
        let mime = event.mail_item().mime();
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}.eml", std::process::id());
        // Written under a temporary name and renamed: a reader never sees half a message.
        let tmp = self.directory.join(format!(".{name}.tmp"));
        let written = std::fs::write(&tmp, &mime)
            .and_then(|()| std::fs::rename(&tmp, self.directory.join(&name)));
        match written {
            Ok(()) => {
                event.ack_mail_item(AckStatus::Success, &SmtpResponse::new(250, "2.0.0", "Written")?)
            }
            Err(e) => {
                let why = SmtpResponse::new(451, "4.3.0", &format!("writing the message: {e}"))?;
                event.ack_mail_item(AckStatus::Retry, &why)
            }
        }
    }

    fn on_close_connection(&mut self, event: &mut CloseConnectionEvent<'_>) -> AgentResult {
        event.unregister_connection()
    }
}

export_agents!("__FACTORY__" => __TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    use mta_agent_sdk::testing::{self, TestHost, TestMessage};
    use mta_agent_sdk::Action;

    #[test]
    fn writes_the_message_and_acknowledges_it() {
        let dir = std::env::temp_dir().join(format!("__CRATE__-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent =
            testing::create::<__TYPE__>(&[("directory", dir.to_str().unwrap())]).unwrap();
        let message = TestMessage::parse(b"Subject: hi\r\n\r\nbody\r\n")
            .with_envelope("a@example.test", &["b@example.test"]);
        let mut host = TestHost::for_message(message.clone());
        testing::run(&mut agent, Event::OnDeliverMailItem, &mut host).unwrap();
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read(files[0].path()).unwrap(), message.to_mime());
        assert!(matches!(
            host.actions.as_slice(),
            [Action::AckMailItem { status: AckStatus::Success, .. }]
        ), "{:?}", host.actions);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_defers_the_queue() {
        let mut agent =
            testing::create::<__TYPE__>(&[("directory", "/nonexistent/__CRATE__")]).unwrap();
        let mut host = TestHost::default().with_arg("next_hop_domain", "example.test");
        testing::run(&mut agent, Event::OnOpenConnection, &mut host).unwrap();
        assert!(matches!(host.actions.as_slice(), [Action::DeferQueue { .. }]), "{:?}", host.actions);
    }

    #[test]
    fn requires_the_directory_parameter() {
        assert!(testing::create::<__TYPE__>(&[]).is_err());
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_crate_type_and_factory_names() {
        let n = Names::of("Block Spam").unwrap();
        assert_eq!(
            (n.krate.as_str(), n.ty.as_str(), n.factory.as_str()),
            ("block-spam", "BlockSpam", "Custom.BlockSpamFactory")
        );
        assert_eq!(
            (n.agent.as_str(), n.library.as_str()),
            ("Block Spam", "libblock_spam.so")
        );
        let n = Names::of("2fa_Check!").unwrap();
        assert_eq!(
            (n.krate.as_str(), n.agent.as_str()),
            ("agent-2fa-check", "agent-2fa-check")
        );
        assert_eq!(Names::of("test").unwrap().krate, "agent-test");
        assert!(Names::of("!!").is_err());
    }

    #[test]
    fn sdk_sources_parse() {
        assert_eq!(
            SdkSource::parse("git:https://x.test/mta.git#sdk-v0.1.0"),
            Ok(SdkSource::Git {
                url: "https://x.test/mta.git".into(),
                tag: "sdk-v0.1.0".into()
            })
        );
        assert_eq!(
            SdkSource::parse("version:0.1.2"),
            Ok(SdkSource::Version("0.1.2".into()))
        );
        assert!(SdkSource::parse("version:0.1").is_err());
        assert!(SdkSource::parse("/some/dir").is_err());
        assert!(SdkSource::parse("git:https://x.test/mta.git").is_err());
    }

    #[test]
    fn the_sdk_dependency_is_written_as_cargo_reads_it() {
        let version = SdkSource::Version("0.1.0".into()).dependency().unwrap();
        assert_eq!(version, "\"0.1.0\"");
        let git = SdkSource::Git {
            url: "https://x.test/mta.git".into(),
            tag: "sdk-v0.1.0".into(),
        };
        assert_eq!(
            git.dependency().unwrap(),
            "{ git = \"https://x.test/mta.git\", tag = \"sdk-v0.1.0\" }"
        );
        // A path without a Cargo.toml is refused before anything is written.
        assert!(SdkSource::Path("/nonexistent/agent-sdk".into())
            .dependency()
            .is_err());
        // Every form parses as TOML, as the dependency of a manifest.
        for dependency in [version, git.dependency().unwrap()] {
            let manifest = format!("[dependencies]\nmta-agent-sdk = {dependency}\n");
            assert!(
                toml::from_str::<toml::Table>(&manifest).is_ok(),
                "{manifest}"
            );
        }
    }

    #[test]
    fn the_default_sdk_is_this_checkouts_or_the_version_this_host_was_built_with() {
        // Built from this checkout, which is here: its agent-sdk/.
        let here = built_from();
        assert_eq!(SdkSource::default_for(&here), SdkSource::Path(here.clone()));
        // A checkout that is gone, or holds another SDK version: the registry version.
        let version = SdkSource::Version(mta_agent_sdk::version::SDK_VERSION.to_string());
        assert_eq!(
            SdkSource::default_for(Path::new("/nonexistent/agent-sdk")),
            version
        );
        let other = std::env::temp_dir().join(format!("mta-agent-new-sdk-{}", std::process::id()));
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(
            other.join("Cargo.toml"),
            "[package]\nname = \"mta-agent-sdk\"\nversion = \"0.0.9\"\n",
        )
        .unwrap();
        assert_eq!(SdkSource::default_for(&other), version);
        std::fs::remove_dir_all(&other).unwrap();

        let dir = std::env::temp_dir().join(format!("mta-agent-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run("Stamp", AgentClass::Routing, Some(&dir), None).unwrap();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!(
                "\nmta-agent-sdk = {{ path = \"{}\" }}\n",
                here.display()
            )),
            "{manifest}"
        );
        // A second run refuses the directory and leaves it as it was.
        assert!(run("Stamp", AgentClass::SmtpReceive, Some(&dir), None).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.join("Cargo.toml")).unwrap(),
            manifest
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
