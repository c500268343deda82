//! Canary rollout over real SMTP sessions through the real binary: a canary entry serves its
//! share of new sessions beside the current agent, a faulty canary is rolled back on its own,
//! `mta agent promote` and `rollback` change what new sessions get, and a bad canary attribute
//! is reported with its position.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const MESSAGE: &str =
    "From: a@elsewhere.test\nTo: alice@example.test\nSubject: canary test\n\nbody\n";
const WAIT: Duration = Duration::from_secs(20);

/// An agents file with probe `Cur`, probe `Mid` when `mid`, and `Cur`'s canary `Can` (listed
/// last) serving `percent`; `bad` parameters for the canary make it misbehave.
fn agents_with(log: &std::path::Path, percent: &str, bad: &[(&str, &str)], mid: bool) -> String {
    let mut canary = Entry::probe("Can", log).param("stamp", "true");
    for (n, v) in bad {
        canary = canary.param(n, v);
    }
    let mut entries = vec![Entry::probe("Cur", log).param("stamp", "true")];
    if mid {
        entries.push(Entry::probe("Mid", log).param("stamp", "true"));
    }
    entries.push(canary);
    agents_xml(5000, &entries).replace(
        "<agent name=\"Can\"",
        &format!("<agent name=\"Can\" canaryOf=\"Cur\" canary=\"{percent}\""),
    )
}

fn agents(log: &std::path::Path, percent: &str, bad: &[(&str, &str)]) -> String {
    agents_with(log, percent, bad, false)
}

fn start(dir: &TestDir, text: &str, extra: &str) -> Mta {
    dir.write("agents.config", text);
    Mta::start(
        dir,
        &format!("[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n{extra}"),
        &[],
    )
}

fn mta_cmd(mta: &Mta, dir: &TestDir, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--config", mta.config.to_str().unwrap(), "agent"];
    all.extend_from_slice(args);
    let (code, out, err) = run_mta(&dir.0, &all);
    (code, format!("{out}{err}"))
}

/// The `X-Probe-*` stamps of a delivered message.
fn stamps(message: &str) -> Vec<String> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("X-Probe-"))
        .map(|l| l.split(':').next().unwrap().to_string())
        .collect()
}

/// Sends `n` messages, one session each, and returns the stamps of each delivered message.
fn sessions(mta: &Mta, n: usize) -> Vec<Vec<String>> {
    let before = mta.maildir("alice").len();
    for _ in 0..n {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.send_mail("a@elsewhere.test", &["alice@example.test"], MESSAGE);
        assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
        smtp.quit();
    }
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == before + n),
        "not all delivered:\n{}",
        mta.log()
    );
    let mut all = mta.maildir("alice");
    all.drain(..before);
    all.iter().map(|m| stamps(m)).collect()
}

fn count(stamped: &[Vec<String>], which: &str) -> usize {
    stamped
        .iter()
        .filter(|s| *s == &[which.to_string()])
        .count()
}

fn curl(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("running curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_canary_serves_its_share_of_new_sessions_and_rollback_removes_it() {
    let dir = TestDir::new("canary-share");
    let log = dir.path("probe.log");
    let port = free_port();
    let mta = start(
        &dir,
        &agents_with(&log, "50", &[], true),
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let stamped = sessions(&mta, 20);
    // Each session saw exactly one of the two, at the current agent's priority (before Mid,
    // though the canary is listed after it).
    let stamped: Vec<Vec<String>> = stamped
        .into_iter()
        .map(|mut s| {
            assert_eq!(s.len(), 2, "{s:?}");
            assert_eq!(s.pop().unwrap(), "X-Probe-Mid");
            s
        })
        .collect();
    let (cur, can) = (
        count(&stamped, "X-Probe-Cur"),
        count(&stamped, "X-Probe-Can"),
    );
    assert_eq!(cur + can, 20, "{stamped:?}");
    assert!(
        (9..=11).contains(&can),
        "canary served {can} of 20: {stamped:?}"
    );

    let (code, listing) = mta_cmd(&mta, &dir, &["list"]);
    assert_eq!(code, 0, "{listing}");
    assert!(
        listing.contains("canary: Can serves 50% of new sessions or mail items beside Cur"),
        "{listing}"
    );
    let status = mta.status("transport");
    let can_status = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "Can")
        .unwrap()
        .clone();
    assert_eq!(can_status["canary_of"], "Cur");
    assert_eq!(can_status["canary_percent"], 50);
    let metrics = curl(port);
    assert!(
        metrics.contains("mta_agent_canary_share{service=\"transport\",agent=\"Can\"} 50"),
        "{metrics}"
    );

    let generation = mta.generation("transport");
    let (code, out) = mta_cmd(&mta, &dir, &["rollback", "Cur"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Rolled back canary \"Can\""), "{out}");
    assert!(!std::fs::read_to_string(dir.path("agents.config"))
        .unwrap()
        .contains("Can"));
    assert!(wait_until(WAIT, || mta.generation("transport") > generation));
    let stamped = sessions(&mta, 6);
    assert!(
        stamped.iter().all(|s| s == &["X-Probe-Cur", "X-Probe-Mid"]),
        "{stamped:?}"
    );
    let metrics = curl(port);
    assert!(
        metrics.contains("mta_agent_canary_share{service=\"transport\",agent=\"Can\"} 0"),
        "{metrics}"
    );
}

#[test]
fn a_faulty_canary_is_rolled_back_and_only_its_own_sessions_fail() {
    let dir = TestDir::new("canary-rollback");
    let log = dir.path("probe.log");
    let port = free_port();
    let mta = start(
        &dir,
        &agents(&log, "50", &[("fail", "OnMailCommand")]),
        &format!(
            "canary_min_calls = 10\ncanary_margin_percent = 10\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    );
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..40 {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
        if r.code == 451 {
            refused += 1;
            smtp.quit();
            continue;
        }
        assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
        smtp.cmd("RSET");
        let r = smtp.send_mail("a@elsewhere.test", &["alice@example.test"], MESSAGE);
        assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
        accepted += 1;
        smtp.quit();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(mta.wait_log("Canary rolled back", 1, WAIT), "{}", mta.log());
    // Every refusal is the canary's own fault: as many as its failed MAIL commands.
    let can_faults = probe_log(&log)
        .iter()
        .filter(|l| l.starts_with("Can ") && l.contains(" OnMailCommand "))
        .count();
    assert!(
        refused > 0 && refused <= can_faults,
        "refused {refused}, canary faults {can_faults}"
    );
    // Nothing accepted is lost.
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == accepted),
        "{accepted} accepted:\n{}",
        mta.log()
    );
    let line = mta
        .log()
        .lines()
        .find(|l| l.contains("Canary rolled back"))
        .unwrap()
        .to_string();
    assert!(
        line.contains("WARN")
            && line.contains("canary_rate_percent")
            && line.contains("current_rate_percent"),
        "{line}"
    );

    // After the rollback, every new session gets the current agent and succeeds.
    let (code, listing) = mta_cmd(&mta, &dir, &["list"]);
    assert_eq!(code, 0, "{listing}");
    assert!(
        wait_until(WAIT, || mta_cmd(&mta, &dir, &["list"])
            .1
            .contains("rolled back: canary Can of Cur (fault-or-timeout rate")),
        "{}",
        mta_cmd(&mta, &dir, &["list"]).1
    );
    let stamped = sessions(&mta, 10);
    assert_eq!(count(&stamped, "X-Probe-Cur"), 10, "{stamped:?}");
    let status = mta.status("transport");
    assert_eq!(status["rolled_back"][0]["name"], "Can", "{status}");
    let metrics = curl(port);
    assert!(
        metrics
            .contains("mta_agent_canary_rolled_back_total{service=\"transport\",agent=\"Can\"} 1")
            && metrics.contains("mta_agent_canary_share{service=\"transport\",agent=\"Can\"} 0"),
        "{metrics}"
    );
}

#[test]
fn promote_serves_the_canary_to_every_new_session() {
    let dir = TestDir::new("canary-promote");
    let log = dir.path("probe.log");
    let mta = start(&dir, &agents(&log, "10", &[]), "");
    let stamped = sessions(&mta, 10);
    assert_eq!(count(&stamped, "X-Probe-Can"), 1, "{stamped:?}");

    let generation = mta.generation("transport");
    let (code, out) = mta_cmd(&mta, &dir, &["promote", "Cur"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Promoted canary \"Can\""), "{out}");
    let text = std::fs::read_to_string(dir.path("agents.config")).unwrap();
    assert!(
        !text.contains("canaryOf")
            && !text.contains("name=\"Can\"")
            && text.contains("name=\"Cur\""),
        "{text}"
    );
    assert!(wait_until(WAIT, || mta.generation("transport") > generation));
    // The entry "Cur" now carries the canary's parameters: it stamps X-Probe-Can.
    let stamped = sessions(&mta, 8);
    assert_eq!(count(&stamped, "X-Probe-Can"), 8, "{stamped:?}");
}

#[test]
fn install_canary_writes_the_entry_and_bad_values_are_positioned() {
    let dir = TestDir::new("canary-install");
    let log = dir.path("probe.log");
    let path = dir.write(
        "agents.config",
        &agents_xml(1000, &[Entry::probe("Cur", &log)]),
    );
    let f = path.to_str().unwrap();
    let probe = lib("probe").display().to_string();
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--canary",
            "25",
            "--name",
            "Cur",
            "--factory",
            "Tests.ProbeFactory",
            "--parameter",
            "name=Can",
            &probe,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Installed canary \"Cur.canary\" of agent \"Cur\""),
        "{out}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("name=\"Cur.canary\"") && text.contains("canaryOf=\"Cur\" canary=\"25\""),
        "{text}"
    );
    let (code, out, err) = run_mta(&dir.0, &["--agents-config", f, "config", "check"]);
    assert_eq!(code, 0, "{out}{err}");

    for (value, expected) in [
        (
            "canary=\"150\"",
            "canary=\"150\" is not valid: expected a whole percentage from 0 to 100",
        ),
        ("canary=\"ten\"", "canary=\"ten\" is not valid"),
    ] {
        let bad = text.replace("canary=\"25\"", value);
        dir.write("agents.config", &bad);
        let (code, out, err) = run_mta(&dir.0, &["--agents-config", f, "config", "check"]);
        let offset = bad.find(value).unwrap() + "canary=\"".len();
        let line = bad[..offset].matches('\n').count() + 1;
        let column = offset - bad[..offset].rfind('\n').map_or(0, |i| i + 1) + 1;
        let all = format!("{out}{err}");
        assert_ne!(code, 0);
        assert!(
            all.contains(&format!("{f}:{line}:{column}: ")) && all.contains(expected),
            "{value}: {all}"
        );
    }
    let bad = text.replace("canaryOf=\"Cur\"", "canaryOf=\"Nobody\"");
    dir.write("agents.config", &bad);
    let (code, out, err) = run_mta(&dir.0, &["--agents-config", f, "config", "check"]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("canaryOf=\"Nobody\": no agent of that name in this file"),
        "{out}{err}"
    );
}

#[test]
fn a_routing_canary_serves_its_share_of_mail_items() {
    let dir = TestDir::new("canary-routing");
    let (cur_log, can_log, smtp_log) = (
        dir.path("cur.log"),
        dir.path("can.log"),
        dir.path("smtp.log"),
    );
    let route = |name: &'static str, log: &std::path::Path| Entry {
        name,
        base_type: "RoutingAgent",
        factory: "Tests.RouteProbeFactory",
        assembly: lib("route-probe").display().to_string(),
        enabled: true,
        params: vec![("log", log.display().to_string())],
    };
    // An SMTP receive pair beside the routing pair, as a Transport file would have both.
    let text = agents_xml(
        5000,
        &[
            Entry::probe("Cur", &smtp_log),
            Entry::probe("Can", &smtp_log),
            route("Route", &cur_log),
            route("Route.next", &can_log),
        ],
    )
    .replace(
        "<agent name=\"Can\"",
        "<agent name=\"Can\" canaryOf=\"Cur\" canary=\"50\"",
    )
    .replace(
        "<agent name=\"Route.next\"",
        "<agent name=\"Route.next\" canaryOf=\"Route\" canary=\"50\"",
    );
    let mta = start(&dir, &text, "");
    let subjects: Vec<String> = (0..10).map(|i| format!("item{i}")).collect();
    for subject in &subjects {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("Subject: {subject}\n\nbody\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
        smtp.quit();
    }
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 10),
        "{}",
        mta.log()
    );
    let submitted = |log: &std::path::Path, subject: &str| {
        probe_log(log)
            .iter()
            .filter(|l| l.starts_with(&format!("OnSubmittedMessage subject={subject} ")))
            .count()
    };
    let mut to_canary = 0;
    for subject in &subjects {
        let (cur, can) = (submitted(&cur_log, subject), submitted(&can_log, subject));
        assert_eq!(cur + can, 1, "{subject}: current {cur}, canary {can}");
        to_canary += can;
    }
    assert!((4..=6).contains(&to_canary), "canary had {to_canary} of 10");
}

#[test]
fn a_slow_canary_is_rolled_back_though_its_sessions_succeed() {
    let dir = TestDir::new("canary-slow");
    let log = dir.path("probe.log");
    // 150 ms against a 100 ms limit: too slow, but it returns (abandoned only past 200 ms).
    let text = agents(
        &log,
        "50",
        &[("sleep", "OnMailCommand"), ("sleep_ms", "150")],
    )
    .replace(
        "timeLimitInMilliseconds=\"5000\"",
        "timeLimitInMilliseconds=\"100\"",
    );
    let mta = start(
        &dir,
        &text,
        "canary_min_calls = 8\ncanary_margin_percent = 10\n",
    );
    let generation = mta.generation("transport");
    let stamped = sessions(&mta, 12);
    assert!(count(&stamped, "X-Probe-Can") > 0, "{stamped:?}");
    assert!(mta.wait_log("Canary rolled back", 1, WAIT), "{}", mta.log());
    // The pipeline without the canary is serving.
    assert!(wait_until(WAIT, || mta.generation("transport") > generation));
    assert!(mta.log().contains("Agent too slow."));
    let stamped = sessions(&mta, 6);
    assert_eq!(count(&stamped, "X-Probe-Cur"), 6, "{stamped:?}");
}

#[test]
fn a_delivery_canary_serves_its_share_of_delivery_connections() {
    let dir = TestDir::new("canary-delivery");
    let (cur_log, can_log) = (dir.path("cur.log"), dir.path("can.log"));
    let delivery = |name: &'static str, log: &std::path::Path| Entry {
        name,
        base_type: "DeliveryAgent",
        factory: "Tests.DeliveryProbeFactory",
        assembly: lib("route-probe").display().to_string(),
        enabled: true,
        params: vec![("log", log.display().to_string())],
    };
    let text = agents_xml(
        5000,
        &[
            Entry {
                name: "Probe Router",
                base_type: "RoutingAgent",
                factory: "Mta.Samples.RecipientRouterFactory",
                assembly: lib("recipient-router").display().to_string(),
                enabled: true,
                params: vec![
                    ("pattern", "*@probe.test".into()),
                    ("routing_domain", "PROBE".into()),
                ],
            },
            delivery("Delivery", &cur_log),
            delivery("Delivery.next", &can_log),
        ],
    )
    .replace(
        "<agent name=\"Delivery.next\"",
        "<agent name=\"Delivery.next\" canaryOf=\"Delivery\" canary=\"50\"",
    );
    // One item per connection, so each item is a new connection and a new choice.
    let mta = start(
        &dir,
        &text,
        "[[delivery_agent_connectors]]\nname = \"Probe\"\naddress_spaces = [\"PROBE:*;1\"]\ndelivery_protocol = \"PROBE\"\nmax_concurrent_connections = 1\nmax_messages_per_connection = 1\n",
    );
    let delivered = |log: &std::path::Path| {
        probe_log(log)
            .iter()
            .filter(|l| l.starts_with("OnDeliverMailItem"))
            .count()
    };
    for i in 0..8 {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.send_mail(
            "alice@example.test",
            &["x@probe.test"],
            &format!("Subject: d{i}\n\nhi\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
        smtp.quit();
        // One at a time: the connection of the previous item is closed before the next opens.
        assert!(
            wait_until(WAIT, || delivered(&cur_log) + delivered(&can_log) == i + 1),
            "{}",
            mta.log()
        );
    }
    let (cur, can) = (delivered(&cur_log), delivered(&can_log));
    assert!((3..=5).contains(&can), "current {cur}, canary {can}");
}
