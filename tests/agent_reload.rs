//! The agent pipeline of a running host, over real SMTP sessions: priority order, live reload of
//! config edits and of rebuilt libraries while sessions are in flight, bad edits, faults and
//! time limits.

mod support;

use std::time::{Duration, Instant};
use support::*;

const MESSAGE: &str =
    "From: a@elsewhere.test\nTo: alice@example.test\nSubject: reload test\n\nbody\n";
const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &TestDir, entries: &[Entry<'_>], time_limit_ms: u64) -> Mta {
    dir.write("agents.config", &agents_xml(time_limit_ms, entries));
    Mta::start(
        dir,
        "[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n",
        &[],
    )
}

fn rewrite(dir: &TestDir, entries: &[Entry<'_>], time_limit_ms: u64) {
    dir.replace(
        "agents.config",
        agents_xml(time_limit_ms, entries).as_bytes(),
    );
}

/// Sends a message through Transport and returns it as delivered to alice.
fn deliver(mta: &Mta, smtp: &mut Smtp) -> String {
    let before = mta.maildir("alice").len();
    let r = smtp.send_mail("a@elsewhere.test", &["alice@example.test"], MESSAGE);
    assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() > before),
        "not delivered:\n{}",
        mta.log()
    );
    mta.maildir("alice").pop().unwrap()
}

fn stamps(message: &str) -> Vec<String> {
    message
        .lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("X-Probe-"))
        .map(str::to_string)
        .collect()
}

#[test]
fn agents_run_in_priority_order_and_a_reject_stops_the_rest() {
    let dir = TestDir::new("priority");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[
            Entry::probe("A", &log).param("reject", "OnMailCommand"),
            Entry::probe("B", &log),
        ],
        5000,
    );
    let _ = std::fs::remove_file(&log); // forget the start-up probe connection
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.cmd("MAIL FROM:<x@elsewhere.test>");
    assert_eq!(
        (r.code, r.text()),
        (550, "5.7.1 probe A rejects".to_string())
    );
    smtp.quit();
    assert!(wait_until(WAIT, || probe_events(&log, "B")
        .contains(&"OnDisconnect".to_string())));
    let order: Vec<String> = probe_log(&log)
        .iter()
        .filter(|l| l.contains(" OnConnect ") || l.contains(" OnMailCommand "))
        .map(|l| {
            format!(
                "{} {}",
                l.split(' ').next().unwrap(),
                l.split(' ').nth(2).unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        ["A OnConnect", "B OnConnect", "A OnMailCommand"],
        "B never sees the rejected MAIL"
    );

    // The same agents with B first (a live edit): B sees MAIL, then A rejects it.
    std::fs::remove_file(&log).unwrap();
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--config",
            mta.config.to_str().unwrap(),
            "agent",
            "set-priority",
            "B",
            "1",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(WAIT, || mta.generation("transport") == 2),
        "{}",
        mta.log()
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<x@elsewhere.test>").code, 550);
    smtp.quit();
    let mails: Vec<String> = probe_log(&log)
        .iter()
        .filter(|l| l.contains(" OnMailCommand "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(mails, ["B", "A"]);
}

#[test]
fn config_edits_reload_live_and_running_sessions_keep_their_agents() {
    let dir = TestDir::new("edits");
    let log = dir.path("probe.log");
    let a = || Entry::probe("A", &log).param("stamp", "true");
    let b = || Entry::probe("B", &log).param("stamp", "true");
    let c = || Entry::probe("C", &log).param("stamp", "true");
    let mut mta = start(&dir, &[a(), b().disabled()], 5000);
    assert_eq!(mta.generation("transport"), 1);

    let mut old_session = Smtp::ehlo(mta.transport);
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-A: 1.0.0"]
    );

    // enable B
    rewrite(&dir, &[a(), b()], 5000);
    assert!(
        wait_until(WAIT, || mta.generation("transport") == 2),
        "{}",
        mta.log()
    );
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-A: 1.0.0", "X-Probe-B: 1.0.0"]
    );
    // the session opened before the reload still runs the old pipeline
    assert_eq!(
        stamps(&deliver(&mta, &mut old_session)),
        ["X-Probe-A: 1.0.0"]
    );

    // reorder
    rewrite(&dir, &[b(), a()], 5000);
    assert!(wait_until(WAIT, || mta.generation("transport") == 3));
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-B: 1.0.0", "X-Probe-A: 1.0.0"]
    );

    // add C, remove A, disable B
    rewrite(&dir, &[b().disabled(), c()], 5000);
    assert!(wait_until(WAIT, || mta.generation("transport") == 4));
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-C: 1.0.0"]
    );
    let status = mta.status("transport");
    let names: Vec<&str> = status["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["C"]);

    // the old session is still served by the first pipeline, and no session failed
    assert_eq!(
        stamps(&deliver(&mta, &mut old_session)),
        ["X-Probe-A: 1.0.0"]
    );
    old_session.quit();
    assert!(mta.alive());
    assert!(mta.log().matches("Agent pipeline swapped.").count() >= 3);
    mta.stop();
}

#[test]
fn a_rebuilt_library_replaces_the_agent_for_new_sessions_only() {
    let dir = TestDir::new("rebuild");
    let log = dir.path("probe.log");
    let library = dir.path("agents/libprobe.so");
    std::fs::create_dir_all(library.parent().unwrap()).unwrap();
    std::fs::copy(lib("probe"), &library).unwrap();
    let entry = || {
        Entry::probe("P", &log)
            .param("stamp", "true")
            .assembly(&library)
    };
    let mta = start(&dir, &[entry()], 5000);
    let first_library = mta.status("transport")["agents"][0]["library_generation"]
        .as_u64()
        .unwrap();

    let mut in_flight = Smtp::ehlo(mta.transport);
    assert_eq!(in_flight.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);

    // "rebuild": a new file at the same path
    dir.replace(
        "agents/libprobe.so",
        &std::fs::read(lib("probe-v2")).unwrap(),
    );
    assert!(
        wait_until(WAIT, || mta.generation("transport") == 2),
        "{}",
        mta.log()
    );
    let second_library = mta.status("transport")["agents"][0]["library_generation"]
        .as_u64()
        .unwrap();
    assert!(
        second_library > first_library,
        "the new library was loaded as a new image"
    );

    // the session in flight finishes on the old agent
    assert_eq!(in_flight.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(in_flight.cmd("DATA").code, 354);
    in_flight.send(b"Subject: in flight\r\n\r\nx\r\n.\r\n");
    assert_eq!(in_flight.read_reply().code, 250);
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert_eq!(stamps(&mta.maildir("alice")[0]), ["X-Probe-P: 1.0.0"]);
    in_flight.quit();

    // a new session gets the rebuilt agent
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-P: 2.0.0"]
    );
    let versions: Vec<String> = probe_log(&log)
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert!(versions.contains(&"1.0.0".to_string()) && versions.contains(&"2.0.0".to_string()));
}

#[test]
fn a_bad_edit_changes_nothing_and_the_old_pipeline_keeps_serving() {
    let dir = TestDir::new("badedit");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("A", &log).param("stamp", "true")],
        5000,
    );

    let broken =
        agents_xml(5000, &[Entry::probe("A", &log)]).replace("<agentList>", "<agentList><bogus/>");
    dir.replace("agents.config", broken.as_bytes());
    assert!(
        mta.wait_log("Agent pipeline reload failed", 1, WAIT),
        "{}",
        mta.log()
    );
    let status = mta.status("transport");
    assert_eq!(status["generation"].as_u64(), Some(1));
    let error = status["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("agents.config:7:")
            && error.contains("unknown element <bogus> in <agentList>"),
        "{error}"
    );
    assert!(mta.log().contains("unknown element <bogus>"));
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-A: 1.0.0"]
    );

    // a library that cannot load is a bad edit too
    let missing = Entry::probe("A", &log).assembly(&dir.path("nowhere/libprobe.so"));
    rewrite(&dir, &[missing], 5000);
    assert!(mta.wait_log("Agent pipeline reload failed", 2, WAIT));
    assert_eq!(mta.generation("transport"), 1);

    // the fix is picked up
    rewrite(
        &dir,
        &[
            Entry::probe("A", &log).param("stamp", "true"),
            Entry::probe("B", &log).param("stamp", "true"),
        ],
        5000,
    );
    assert!(wait_until(WAIT, || mta.generation("transport") == 2));
    assert!(mta.status("transport")["last_error"].is_null());
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))).len(),
        2
    );
}

#[test]
fn an_agent_that_panics_or_fails_leaves_the_host_serving() {
    let dir = TestDir::new("panic");
    let log = dir.path("probe.log");
    let mut mta = start(
        &dir,
        &[
            Entry::probe("Boom", &log)
                .param("panic", "OnMailCommand")
                .param("fail", "OnRcptCommand"),
            Entry::probe("After", &log),
        ],
        5000,
    );
    for _ in 0..3 {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
        assert_eq!((r.code, r.enhanced()), (451, "4.3.0".to_string()), "{r:?}");
        // the session goes on
        assert_eq!(smtp.cmd("NOOP").code, 250);
        smtp.quit();
    }
    assert!(mta.alive());
    assert!(
        mta.log().lines().any(
            |l| l.contains("agent panicked at tests/agents/probe/src/lib.rs:")
                && l.contains(": probe Boom panics in OnMailCommand")
        ),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || mta.status("transport")["agents"][0]
        ["faults"]
        .as_u64()
        >= Some(3)));
    // a lower-priority agent never ran for the faulted event
    assert!(!probe_events(&log, "After").contains(&"OnMailCommand".to_string()));

    // an error return is a fault too
    rewrite(
        &dir,
        &[Entry::probe("Fail", &log).param("fail", "OnRcptCommand")],
        5000,
    );
    assert!(wait_until(WAIT, || mta.generation("transport") == 2));
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    let r = smtp.cmd("RCPT TO:<alice@example.test>");
    assert_eq!((r.code, r.enhanced()), (451, "4.3.0".to_string()));
    smtp.quit();
    assert!(mta.alive());
    mta.stop();
}

#[test]
fn the_time_limit_is_enforced_and_a_hung_agent_stalls_no_other_session() {
    let dir = TestDir::new("timelimit");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("Slow", &log)
            .param("sleep", "OnMailCommand")
            .param("sleep_ms", "30000")
            .param("sleep", "OnHelpCommand")],
        400,
    );
    let mut hung = Smtp::ehlo(mta.transport);
    let started = Instant::now();
    hung.send(b"MAIL FROM:<a@elsewhere.test>\r\n");

    // meanwhile another session is served at once
    let mut other = Smtp::ehlo(mta.transport);
    let quick = Instant::now();
    assert_eq!(other.cmd("NOOP").code, 250);
    assert!(quick.elapsed() < Duration::from_secs(2));

    let r = hung.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.3.0".to_string()), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "abandoned after {:?}",
        started.elapsed()
    );
    assert!(hung.closed());
    assert!(
        mta.log()
            .contains("Agent did not return within its time limit"),
        "{}",
        mta.log()
    );
    assert!(mta.wait_log("agent=Slow", 1, WAIT));
    other.quit();
}

#[test]
fn a_slow_call_that_returns_is_reported_as_too_slow() {
    let dir = TestDir::new("tooslow");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("Sluggish", &log)
            .param("sleep", "OnNoopCommand")
            .param("sleep_ms", "450")],
        300,
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("NOOP").code, 250);
    smtp.quit();
    assert!(mta.wait_log("Agent too slow.", 1, WAIT), "{}", mta.log());
    assert!(wait_until(WAIT, || mta.status("transport")["agents"][0]
        ["too_slow"]
        .as_u64()
        >= Some(1)));
}

#[test]
fn front_end_agents_never_see_end_of_data_and_the_warning_is_logged_once() {
    let dir = TestDir::new("fet");
    let log = dir.path("probe.log");
    dir.write(
        "fetagents.config",
        &agents_xml(5000, &[Entry::probe("Edge", &log).param("stamp", "true")]),
    );
    let mut mta = Mta::start(
        &dir,
        "[agents]\nfrontend = \"fetagents.config\"\nreload_debounce_ms = 50\n",
        &[],
    );
    let warning = "agent \"Edge\" handles OnEndOfData, which the Front End service never raises";
    assert_eq!(mta.log().matches(warning).count(), 1, "{}", mta.log());

    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail("a@elsewhere.test", &["alice@example.test"], MESSAGE);
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert_eq!(stamps(&mta.maildir("alice")[0]), ["X-Probe-Edge: 1.0.0"]);
    assert!(wait_until(WAIT, || probe_events(&log, "Edge")
        .contains(&"OnDisconnect".to_string())));
    let events = probe_events(&log, "Edge");
    assert!(events.contains(&"OnEndOfHeaders".to_string()));
    assert!(!events.contains(&"OnEndOfData".to_string()), "{events:?}");

    // a reload with the same agent does not repeat the warning
    dir.replace(
        "fetagents.config",
        agents_xml(6000, &[Entry::probe("Edge", &log).param("stamp", "true")]).as_bytes(),
    );
    assert!(wait_until(WAIT, || mta.generation("frontend") == 2));
    assert_eq!(mta.log().matches(warning).count(), 1);
    mta.stop();
}

#[test]
fn a_reload_storm_under_load_fails_no_session_and_the_last_valid_file_wins() {
    let dir = TestDir::new("storm");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        &[Entry::probe("A", &log).param("stamp", "true")],
        5000,
    );
    let port = mta.transport;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut sent, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut smtp = Smtp::ehlo(port);
                    let r = smtp.send_mail("a@elsewhere.test", &["alice@example.test"], MESSAGE);
                    if r.code == 250 {
                        sent += 1;
                    } else {
                        failed.push(r);
                    }
                    smtp.quit();
                }
                (sent, failed)
            })
        })
        .collect();
    for i in 0..100 {
        if i % 3 == 2 {
            dir.replace("agents.config", b"<configuration><mexRuntime><agentList>");
        } else {
            let name = if i % 2 == 0 { "B" } else { "C" };
            rewrite(
                &dir,
                &[Entry::probe(name, &log).param("stamp", "true")],
                5000,
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    rewrite(
        &dir,
        &[Entry::probe("Last", &log).param("stamp", "true")],
        5000,
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for s in senders {
        let (sent, failed) = s.join().unwrap();
        assert!(
            failed.is_empty(),
            "sessions failed during the storm: {failed:?}"
        );
        total += sent;
    }
    assert!(total > 10, "the load went on: {total} messages");
    assert!(
        wait_until(WAIT, || mta.status("transport")["agents"][0]["name"]
            == "Last"),
        "{}",
        mta.status("transport")
    );
    assert!(mta.status("transport")["last_error"].is_null());
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-Last: 1.0.0"]
    );
    println!(
        "reload storm: {total} messages accepted during 100 rewrites, generation {}",
        mta.generation("transport")
    );
}

/// What a new SMTP session to Transport is told at MAIL FROM (the probe rejects there, naming
/// itself, so the reply says which pipeline served the session).
fn mail_reply(mta: &Mta) -> String {
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.cmd("MAIL FROM:<x@elsewhere.test>");
    smtp.quit();
    format!("{} {}", r.code, r.text())
}

#[test]
fn a_noisy_neighbour_file_neither_triggers_nor_delays_a_reload() {
    let dir = TestDir::new("neighbour");
    let log = dir.path("probe.log");
    let rejecter = |name| Entry::probe(name, &log).param("reject", "OnMailCommand");
    dir.write("agents.config", &agents_xml(5000, &[rejecter("A")]));
    // The default debounce: the bound below is the one the documentation promises.
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    assert_eq!(mail_reply(&mta), "550 5.7.1 probe A rejects");

    // A log file beside agents.config, appended every 20-50 ms until told to stop.
    let neighbour = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        let path = dir.path("neighbour.log");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(file, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(20 + n % 4 * 10));
            }
        })
    };

    // The neighbour alone never reloads anything, while it writes or after it stops.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = neighbour(stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mta.generation("transport"), 1);
    let quiet = mta.log();
    assert!(
        !quiet.contains("Agent pipeline swapped.")
            && !quiet.contains("No change.")
            && !quiet.contains("reload failed"),
        "{quiet}"
    );
    assert_eq!(mail_reply(&mta), "550 5.7.1 probe A rejects");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = neighbour(stop.clone());
    // A rewrite while the neighbour keeps writing serves new sessions within the bound.
    for (round, name) in ["B", "C", "D"].into_iter().enumerate() {
        let written = Instant::now();
        rewrite(&dir, &[rejecter(name)], 5000);
        let expected = format!("550 5.7.1 probe {name} rejects");
        assert!(
            wait_until(WAIT, || mail_reply(&mta) == expected),
            "{}",
            mta.log()
        );
        let serving = written.elapsed();
        assert!(
            serving < Duration::from_secs(1),
            "write to serving took {serving:?}\n{}",
            mta.log()
        );
        assert!(wait_until(WAIT, || mta.generation("transport") == round as u64 + 2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(mta.log().matches("Agent pipeline swapped.").count(), 3);
}

#[test]
fn a_no_op_write_says_no_change_and_a_fixed_file_says_recovered() {
    let dir = TestDir::new("recovered");
    let log = dir.path("probe.log");
    let good = agents_xml(5000, &[Entry::probe("A", &log).param("stamp", "true")]);
    let mta = start(
        &dir,
        &[Entry::probe("A", &log).param("stamp", "true")],
        5000,
    );
    let list = || {
        let (code, out, err) = run_mta(
            &dir.0,
            &["--config", mta.config.to_str().unwrap(), "agent", "list"],
        );
        (code, format!("{out}{err}"))
    };

    // The same bytes again: nothing to swap, and the log says so.
    dir.replace("agents.config", good.as_bytes());
    assert!(mta.wait_log("No change.", 1, WAIT), "{}", mta.log());
    let line = mta
        .log()
        .lines()
        .find(|l| l.contains("No change."))
        .unwrap()
        .to_string();
    assert!(
        line.contains("service=transport") && line.contains("generation=1"),
        "{line}"
    );
    assert_eq!(mta.generation("transport"), 1);
    assert!(!mta.log().contains("Agent pipeline swapped."));
    assert!(!mta.log().contains("Agent pipeline recovered."));

    // A broken file, then the running file restored: the pipeline is healthy again, and the
    // log, the status file and `mta agent list` say so at once.
    let broken = good.replace("<agentList>", "<agentList><bogus/>");
    dir.replace("agents.config", broken.as_bytes());
    assert!(mta.wait_log("Agent pipeline reload failed", 1, WAIT));
    assert!(wait_until(WAIT, || !mta.status("transport")["last_error"].is_null()));
    let (code, text) = list();
    assert!(
        code != 0 && text.contains("unknown element <bogus>"),
        "{text}"
    );
    dir.replace("agents.config", good.as_bytes());
    assert!(
        mta.wait_log("Agent pipeline recovered.", 1, WAIT),
        "{}",
        mta.log()
    );
    let line = mta
        .log()
        .lines()
        .find(|l| l.contains("Agent pipeline recovered."))
        .unwrap()
        .to_string();
    assert!(
        line.contains("service=transport") && line.contains("generation=1"),
        "{line}"
    );
    assert!(mta.status("transport")["last_error"].is_null());
    let (code, text) = list();
    assert!(
        code == 0
            && text.contains("(running, pipeline generation 1)")
            && !text.contains("last reload failed"),
        "{text}"
    );
    assert_eq!(mta.log().matches("No change.").count(), 1, "{}", mta.log());

    // Fixed by a real change: swapped and recovered, with the new generation.
    dir.replace("agents.config", broken.as_bytes());
    assert!(mta.wait_log("Agent pipeline reload failed", 2, WAIT));
    rewrite(
        &dir,
        &[
            Entry::probe("A", &log).param("stamp", "true"),
            Entry::probe("B", &log).param("stamp", "true"),
        ],
        5000,
    );
    assert!(
        mta.wait_log("Agent pipeline recovered.", 2, WAIT),
        "{}",
        mta.log()
    );
    let line = mta
        .log()
        .lines()
        .filter(|l| l.contains("Agent pipeline recovered."))
        .nth(1)
        .unwrap()
        .to_string();
    assert!(line.contains("generation=2"), "{line}");
    assert_eq!(mta.generation("transport"), 2);
    assert!(mta.status("transport")["last_error"].is_null());
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-A: 1.0.0", "X-Probe-B: 1.0.0"]
    );

    // A later successful reload is an ordinary one: no second recovery line.
    rewrite(
        &dir,
        &[Entry::probe("B", &log).param("stamp", "true")],
        5000,
    );
    assert!(wait_until(WAIT, || mta.generation("transport") == 3));
    assert_eq!(mta.log().matches("Agent pipeline recovered.").count(), 2);
}

#[test]
fn a_library_written_in_place_is_read_again_even_at_the_same_size() {
    let dir = TestDir::new("inplace");
    let log = dir.path("probe.log");
    let library = dir.path("agents/libprobe.so");
    std::fs::create_dir_all(library.parent().unwrap()).unwrap();
    let bytes = std::fs::read(lib("probe")).unwrap();
    std::fs::write(&library, &bytes).unwrap();
    let entry = |value: &str| {
        Entry::probe("P", &log)
            .param("stamp", "true")
            .param("unused", value)
            .assembly(&library)
    };
    let mta = start(&dir, &[entry("1")], 5000);
    let image = || {
        mta.status("transport")["agents"][0]["library_generation"]
            .as_u64()
            .unwrap()
    };
    let first = image();

    // Only the agents file changes: the library, untouched, is the image already loaded.
    rewrite(&dir, &[entry("2")], 5000);
    assert!(wait_until(WAIT, || mta.generation("transport") == 2));
    assert_eq!(image(), first);

    // The same bytes written over it in place: read again, the same content, nothing to swap.
    std::fs::write(&library, &bytes).unwrap();
    assert!(mta.wait_log("No change.", 1, WAIT), "{}", mta.log());
    assert_eq!(mta.generation("transport"), 2);
    assert_eq!(image(), first);

    // Other bytes of the same size, in place (same inode, same size): a new image.
    let mut changed = bytes.clone();
    *changed.last_mut().unwrap() ^= 0xff;
    std::fs::write(&library, &changed).unwrap();
    assert!(
        wait_until(WAIT, || mta.generation("transport") == 3),
        "{}",
        mta.log()
    );
    assert!(image() > first, "{}", mta.log());
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-P: 1.0.0"]
    );
}

#[test]
fn a_library_named_through_a_symlink_reloads_when_its_target_is_rebuilt() {
    let dir = TestDir::new("symlink");
    let log = dir.path("probe.log");
    // The build's output in one directory, the agents file naming a link to it in another.
    std::fs::create_dir_all(dir.path("build")).unwrap();
    std::fs::create_dir_all(dir.path("agents")).unwrap();
    std::fs::copy(lib("probe"), dir.path("build/libprobe.so")).unwrap();
    let link = dir.path("agents/libprobe.so");
    std::os::unix::fs::symlink("../build/libprobe.so", &link).unwrap();
    let entry = Entry::probe("P", &log)
        .param("stamp", "true")
        .assembly(&link);
    let mta = start(&dir, &[entry], 5000);
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-P: 1.0.0"]
    );

    // A rebuild replaces the target; the link never changes.
    dir.replace(
        "build/libprobe.so",
        &std::fs::read(lib("probe-v2")).unwrap(),
    );
    assert!(
        wait_until(WAIT, || mta.generation("transport") == 2),
        "{}",
        mta.log()
    );
    assert_eq!(
        stamps(&deliver(&mta, &mut Smtp::ehlo(mta.transport))),
        ["X-Probe-P: 2.0.0"]
    );
}
