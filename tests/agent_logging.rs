//! Agents log through the SDK into the host's log: with their name, service and event, at the
//! level they chose, rate-limited per agent; a panic is reported naming the agent and library.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &TestDir, entries: &[Entry<'_>]) -> Mta {
    dir.write("agents.config", &agents_xml(5000, entries));
    Mta::start(dir, "[agents]\ntransport = \"agents.config\"\n", &[])
}

/// The host's log lines that contain every one of `needles`.
fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

#[test]
fn agent_lines_reach_the_host_log_with_agent_service_and_event() {
    let dir = TestDir::new("agentlog");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("Talker", &log).param("log_levels", "OnMailCommand")],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    smtp.quit();
    assert!(
        mta.wait_log("probe Talker debug line", 1, WAIT),
        "{}",
        mta.log()
    );
    let text = mta.log();
    // The tests run the host with MTA_LOG=info,mta_host=debug: trace is filtered out by the
    // host's own filter, every other level is written at its level.
    for level in ["ERROR", "WARN", "INFO", "DEBUG"] {
        let line = format!(
            "probe Talker {} line in OnMailCommand",
            level.to_lowercase()
        );
        let found = lines_with(
            &text,
            &[
                level,
                &line,
                "agent=Talker",
                "service=transport",
                "event=OnMailCommand",
            ],
        );
        assert_eq!(found.len(), 1, "{level}: {text}");
    }
    assert!(!text.contains("probe Talker trace line"), "{text}");
}

#[test]
fn a_flooding_agent_is_cut_with_one_suppression_line() {
    let dir = TestDir::new("agentflood");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("Flood", &log)
            .param("flood", "OnMailCommand")
            .param("flood_lines", "5000")],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    smtp.quit();
    assert!(
        mta.wait_log("Agent log lines suppressed", 1, WAIT),
        "{}",
        mta.log()
    );
    let text = mta.log();
    let written = lines_with(&text, &["probe Flood flood line", "agent=Flood"]).len();
    let reports = lines_with(&text, &["Agent log lines suppressed", "agent=Flood"]);
    assert_eq!(reports.len(), 1, "{}", reports.join("\n"));
    let suppressed: usize = reports[0]
        .split("suppressed=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a suppressed=N field");
    // The burst (100) and what refilled during the loop; everything else counted, not written.
    assert!((100..=200).contains(&written), "{written} lines written");
    assert_eq!(written + suppressed, 5000, "{}", reports[0]);
}

#[test]
fn a_panic_is_logged_naming_the_agent_and_its_library() {
    let dir = TestDir::new("agentpanic");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("Crasher", &log).param("panic", "OnNoopCommand")],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("NOOP").code, 451);
    smtp.quit();
    assert!(mta.wait_log("Agent fault.", 1, WAIT), "{}", mta.log());
    let text = mta.log();
    let library = lib("probe").display().to_string();
    let faults = lines_with(
        &text,
        &[
            "Agent fault.",
            "agent=Crasher",
            &format!("library={library}"),
            "event=OnNoopCommand",
            "agent panicked at tests/agents/probe/src/lib.rs:",
            "probe Crasher panics in OnNoopCommand",
        ],
    );
    assert_eq!(faults.len(), 1, "{text}");
    // The panic is not also printed raw by the library's own panic hook, without its agent.
    assert!(!text.contains("' panicked at"), "{text}");
}
