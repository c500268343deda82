//! `mta agent new` and `mta agent try`, as an agent author uses them.
//!
//! The scaffold of each class is written outside the workspace and built there with `cargo test
//! --offline` against the SDK by path, as written; the SMTP receive one is then built and
//! installed with the commands `mta agent new` prints, into a running server, and refuses a
//! sender live: the three-command story. `mta agent try` is run on sample agents and a message.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// The classes, with the name each scaffold is given, its crate's name, and the number of
/// tests its template holds.
const CLASSES: [(&str, &str, &str, usize); 3] = [
    ("smtp-receive", "Block Spam", "block-spam", 4),
    ("routing", "Route Tag", "route-tag", 3),
    ("delivery", "Spool Writer", "spool-writer", 3),
];

/// Scratch space outside the workspace (a crate below it would be taken for a member) and the
/// target directory kept between runs, so the registry crates are compiled once.
struct Outside {
    dir: PathBuf,
    cargo: String,
    target: PathBuf,
}

impl Outside {
    /// None, after saying why, when cargo cannot run here.
    fn new() -> Option<Self> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        if !Command::new(&cargo)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            println!("skipped: cargo ({cargo}) is not available to build the scaffolds");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("mta-scaffold-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!dir.starts_with(workspace()), "{}", dir.display());
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("scaffold");
        Some(Self { dir, cargo, target })
    }

    /// Runs cargo in `crate_dir`, offline, into the shared target directory; returns its
    /// combined output after asserting it succeeded.
    fn cargo(&self, crate_dir: &Path, args: &[&str]) -> String {
        let out = Command::new(&self.cargo)
            .current_dir(crate_dir)
            .args(args)
            .arg("--offline")
            .env("CARGO_TARGET_DIR", &self.target)
            // Every run builds from new paths, which incremental caches would only pile up.
            .env("CARGO_INCREMENTAL", "0")
            .output()
            .expect("running cargo");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "cargo {args:?} in {} failed:\n{text}",
            crate_dir.display()
        );
        text
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if std::env::var_os("MTA_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The SDK and the scaffolds are rebuilt from new paths on every run: drop their build
        // output so the shared target directory keeps only the registry crates.
        let ours = ["mta_agent_sdk", "block_spam", "route_tag", "spool_writer"];
        for sub in ["deps", ".fingerprint", "build", ""] {
            let Ok(entries) = std::fs::read_dir(self.target.join("debug").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().replace('-', "_");
                let name = name.strip_prefix("lib").unwrap_or(&name);
                if ours.iter().any(|o| name.starts_with(o)) {
                    let _ = std::fs::remove_dir_all(entry.path());
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

#[test]
fn each_class_scaffolds_a_crate_that_tests_as_written_and_installs_live_in_three_commands() {
    let Some(outside) = Outside::new() else {
        return;
    };
    let sdk = format!("path:{}", workspace().join("agent-sdk").display());
    let mut printed = String::new();
    for (class, name, krate, tests) in CLASSES {
        let dir = outside.dir.join(krate);
        let (code, out, err) = run_mta(
            &outside.dir,
            &["agent", "new", name, "--class", class, "--sdk", &sdk],
        );
        assert_eq!(code, 0, "{out}{err}");
        for file in ["Cargo.toml", "src/lib.rs", "agent.xml", "README.md"] {
            assert!(dir.join(file).is_file(), "{class}: no {file}:\n{out}");
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("crate-type = [\"cdylib\""), "{manifest}");
        assert_eq!(
            manifest.matches("panic = \"unwind\"").count(),
            2,
            "{manifest}"
        );
        let built = outside.cargo(&dir, &["test"]);
        assert!(
            built.contains(&format!("test result: ok. {tests} passed; 0 failed")),
            "{class}:\n{built}"
        );
        if class == "smtp-receive" {
            printed = out;
        }
    }

    // An existing directory is never written into.
    let (code, out, err) = run_mta(
        &outside.dir,
        &[
            "agent",
            "new",
            "Block Spam",
            "--class",
            "routing",
            "--sdk",
            &sdk,
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("block-spam already exists"), "{err}");
    assert!(
        std::fs::read_to_string(outside.dir.join("block-spam/src/lib.rs"))
            .unwrap()
            .contains("impl SmtpReceiveAgent for BlockSpam")
    );

    // Commands two and three, as `mta agent new` printed them, against a running server; the
    // build goes to the shared target directory, so it is run here instead of as printed.
    assert!(
        printed.contains("\n  cargo build --manifest-path block-spam/Cargo.toml\n"),
        "{printed}"
    );
    let crate_dir = outside.dir.join("block-spam");
    outside.cargo(&crate_dir, &["build"]);
    // The shared target directory stands in for the crate's own target/.
    std::fs::create_dir_all(crate_dir.join("target/debug")).unwrap();
    std::fs::copy(
        outside.target.join("debug/libblock_spam.so"),
        crate_dir.join("target/debug/libblock_spam.so"),
    )
    .unwrap();
    let install = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("mta agent install "))
        .unwrap_or_else(|| panic!("no install command in:\n{printed}"));
    let dir = TestDir::new("scaffold-live");
    let agents = dir.write("agents.config", &agents_xml(1000, &[]));
    let running = Mta::start(
        &dir,
        &format!("[agents]\ntransport = {:?}\n", agents.display().to_string()),
        &["--roles", "transport"],
    );
    let mut smtp = Smtp::ehlo(running.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<x@spam.test>").code, 250);
    assert_eq!(smtp.cmd("RSET").code, 250);
    let bin = mta_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .current_dir(&outside.dir)
        .args(["-c", install])
        .env("PATH", path)
        .env("MTA_CONFIG", &running.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{install}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Installed agent \"Block Spam\""),
        "{out:?}"
    );
    assert!(
        wait_until(WAIT, || running.generation("transport") >= 2),
        "{}",
        running.log()
    );
    // A new session sees the new pipeline.
    let mut smtp = Smtp::ehlo(running.transport);
    let refused = smtp.cmd("MAIL FROM:<x@mail.spam.test>");
    assert_eq!((refused.code, refused.enhanced()), (550, "5.7.1".into()));
    assert_eq!(refused.text(), "5.7.1 Sender domain refused");
    assert_eq!(smtp.cmd("MAIL FROM:<x@example.test>").code, 250);
}

/// `mta agent try LIBRARY --factory FACTORY --eml EML EXTRA...`, run in `dir`.
fn agent_try(
    dir: &TestDir,
    library: &std::path::Path,
    factory: &str,
    eml: &std::path::Path,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "agent",
        "try",
        library.to_str().unwrap(),
        "--factory",
        factory,
        "--eml",
        eml.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_mta(&dir.0, &args)
}

/// A message from `ann@example.test` to `bob@example.test`.
const MESSAGE: &str =
    "From: Ann <ann@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: hello\r\n\r\nHi Bob.\r\n";

#[test]
fn try_prints_the_events_the_actions_and_the_diff() {
    let dir = TestDir::new("agent-try");
    let eml = dir.write("hello.eml", MESSAGE);
    let before: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let stamper = lib("header-stamper");
    let (code, out, err) = agent_try(
        &dir,
        &stamper,
        "Mta.Samples.HeaderStamperFactory",
        &eml,
        &[
            "--parameter",
            "header=X-Scanned",
            "--parameter",
            "value=by mta from {remote}",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Message "), "{out}");
    assert!(
        out.contains(": from <ann@example.test> to <bob@example.test>\n"),
        "{out}"
    );
    assert!(
        out.contains("OnEndOfData\n  header added: X-Scanned: by mta from 192.0.2.1:49152\n"),
        "{out}"
    );
    assert!(
        out.contains(" Subject: hello\n+X-Scanned: by mta from 192.0.2.1:49152\n \n Hi Bob.\n"),
        "{out}"
    );
    // Nothing was written next to the message (nor anywhere else the command was given).
    let after: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after);
    assert_eq!(std::fs::read_to_string(&eml).unwrap(), MESSAGE);

    // --event leaves the other events out.
    let (code, out, _) = agent_try(
        &dir,
        &stamper,
        "Mta.Samples.HeaderStamperFactory",
        &eml,
        &["--event", "OnEndOfHeaders"],
    );
    assert_eq!(code, 0);
    assert!(!out.contains("\nOnEndOfData"), "{out}");
    assert!(out.ends_with("Message: unchanged\n"), "{out}");
}

#[test]
fn try_shows_a_reject_with_its_reply_and_ends_the_session_there() {
    let dir = TestDir::new("agent-try-reject");
    let eml = dir.write("hello.eml", MESSAGE);
    // The client of `mta agent try` is 192.0.2.1.
    let (code, out, err) = agent_try(
        &dir,
        &lib("connection-filter"),
        "Mta.Samples.ConnectionFilterFactory",
        &eml,
        &[
            "--parameter",
            "deny=192.0.2.0/24",
            "--from",
            "carol@example.test",
            "--to",
            "dave@example.test",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(": from <carol@example.test> to <dave@example.test>\n"),
        "{out}"
    );
    assert!(
        out.contains("OnConnect\n  reject: 554 5.7.1 Connection refused by policy\n  (the session ends here)\n"),
        "{out}"
    );
    assert!(!out.contains("\nOnEndOfData"), "{out}");
}

#[test]
fn try_with_a_missing_factory_names_the_ones_the_library_exports() {
    let dir = TestDir::new("agent-try-factory");
    let eml = dir.write("hello.eml", MESSAGE);
    let (code, out, err) = agent_try(
        &dir,
        &lib("header-stamper"),
        "Mta.Samples.NoSuchFactory",
        &eml,
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "error: library {} has no factory named \"Mta.Samples.NoSuchFactory\"; it exports: \"Mta.Samples.HeaderStamperFactory\" (SmtpReceiveAgent)\n",
            lib("header-stamper").display()
        )
    );
}

#[test]
fn try_runs_the_smtp_events_in_order_drops_a_refused_recipient_and_reports_a_fault() {
    let dir = TestDir::new("agent-try-probe");
    let eml = dir.write(
        "lunch.eml",
        "From: carol@partner.test\nTo: Bob <bob@example.test>, dave@example.test\nSubject: Lunch\n\nAt noon?\n",
    );
    let probe = lib("probe");
    let try_probe = |parameters: &[&str]| {
        let extra: Vec<&str> = parameters.iter().flat_map(|p| ["--parameter", p]).collect();
        agent_try(&dir, &probe, "Tests.ProbeFactory", &eml, &extra)
    };
    let events = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("On"))
            .map(|l| l.to_string())
            .collect()
    };

    let (code, out, err) = try_probe(&["reject_rcpt=bob@example.test", "stamp=true"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        events(&out),
        [
            "OnConnect",
            "OnEhloCommand domain=client.example",
            "OnMailCommand from=<carol@partner.test>",
            "OnRcptCommand recipient=<bob@example.test>",
            "OnRcptCommand recipient=<dave@example.test>",
            "OnDataCommand",
            "OnEndOfHeaders",
            "OnEndOfData",
            "OnDisconnect reason=quit",
        ],
        "{out}"
    );
    assert!(
        out.contains(
            "OnRcptCommand recipient=<bob@example.test>\n  reject: 550 5.7.1 probe probe rejects\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("Envelope now: from <carol@partner.test> to <dave@example.test>\n"),
        "{out}"
    );
    assert!(out.contains("+X-Probe-probe: "), "{out}");

    let (code, out, err) = try_probe(&["panic=OnMailCommand"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("OnMailCommand from=<carol@partner.test>\n  fault: agent panicked at ")
            && out.contains(": probe probe panics in OnMailCommand"),
        "{out}"
    );
    assert_eq!(
        events(&out),
        [
            "OnConnect",
            "OnEhloCommand domain=client.example",
            "OnMailCommand from=<carol@partner.test>",
            "OnDisconnect reason=quit",
        ],
        "{out}"
    );
    assert!(
        err.ends_with("error: the agent faulted (see the fault above)\n"),
        "{err}"
    );
}

#[test]
fn try_gives_a_delivery_agent_one_connection_and_shows_its_acks() {
    let dir = TestDir::new("agent-try-delivery");
    let eml = dir.write("hello.eml", MESSAGE);
    let spool = dir.path("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let (code, out, err) = agent_try(
        &dir,
        &lib("text-messaging"),
        "Mta.Samples.TextMessagingFactory",
        &eml,
        &[
            "--parameter",
            &format!("spool={}", spool.display()),
            "--to",
            "+15551234567@mobile.example.test",
            "--to",
            "bob@mobile.example.test",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let expected = "OnOpenConnection next_hop_domain=mobile.example.test
  register connection to sms-gateway: 250 2.0.0 SMS gateway spool ready
OnDeliverMailItem next_hop_domain=mobile.example.test
  ack +15551234567@mobile.example.test Success: 250 2.0.0 Text sent to the gateway
  ack bob@mobile.example.test Fail: 550 5.1.3 bob@mobile.example.test is not a phone number
OnCloseConnection next_hop_domain=mobile.example.test
  unregister connection
Message: unchanged
";
    assert!(out.ends_with(expected), "{out}");
    // The agent's own work is real: it wrote its text to the spool.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 1);
}
