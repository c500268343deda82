//! The boundary grew (EventHost's logger and begin_async) without breaking agents built before:
//! the probe built against the SDK as it was before (taken from git history) loads in this host
//! and works beside a probe built now.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::*;

/// The last commit before EventHost grew (with `HostAction::SetRecipient`, which came before).
const BEFORE_GROWTH: &str = "18843a656d5c449a6a39e975e18a1447c1c46a15";

/// Builds the probe of `BEFORE_GROWTH` against that commit's SDK, once, in its own target dir.
fn old_probe() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join(format!(
            "test-agents-before-growth-{}",
            &BEFORE_GROWTH[..12]
        ));
    let src = target.join("src");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src).unwrap();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "git -C '{}' archive {BEFORE_GROWTH} Cargo.toml Cargo.lock agent-sdk tests/agents/probe | tar -x -C '{}'",
                workspace().display(),
                src.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "git archive of {BEFORE_GROWTH}");
        // Only the SDK and the probe: the rest of that workspace is not in the archive.
        let manifest = std::fs::read_to_string(src.join("Cargo.toml")).unwrap();
        let start = manifest.find("members = [").unwrap();
        let end = manifest[start..].find("]\n").unwrap() + start + 2;
        let defaults_end = manifest[end..].find("]\n").unwrap() + end + 2;
        let manifest = format!(
            "{}members = [\"agent-sdk\", \"agent-sdk/macros\", \"tests/agents/probe\"]\n{}",
            &manifest[..start],
            &manifest[defaults_end..]
        );
        std::fs::write(src.join("Cargo.toml"), manifest).unwrap();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&src)
        .args(["build", "--quiet", "-p", "probe"])
        .env("CARGO_TARGET_DIR", target.join("build"))
        .status()
        .unwrap();
    assert!(status.success(), "building the probe of {BEFORE_GROWTH}");
    target.join("build/debug/libprobe.so")
}

#[test]
fn an_agent_built_before_the_boundary_grew_loads_and_works_beside_a_new_one() {
    let old = old_probe();
    let dir = TestDir::new("abigrowth");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[
                Entry::probe("Old", &log)
                    .assembly(&old)
                    .param("reject_rcpt", "bob@example.test"),
                Entry::probe("New", &log)
                    .param("log_levels", "OnMailCommand")
                    .param("async_sleep", "OnRcptCommand")
                    .param("sleep_ms", "50"),
            ],
        ),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    assert_eq!(
        mta.status("transport")["agents"].as_array().map(Vec::len),
        Some(2)
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<bob@example.test>").code, 550);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    smtp.quit();
    assert!(wait_until(Duration::from_secs(20), || probe_events(
        &log, "Old"
    )
    .contains(&"OnDisconnect".to_string())));
    assert!(probe_events(&log, "Old").contains(&"OnMailCommand".to_string()));
    assert!(mta
        .log()
        .contains("agent=New service=transport event=OnMailCommand probe New info line"));
}
