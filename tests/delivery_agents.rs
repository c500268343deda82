//! Delivery Agent connectors as an agent author uses them: a connection carries several items,
//! and every queue-level call of the SDK takes effect (unregister_connection, defer_queue's
//! delay, fail_queue on the whole queue, submit_message).

mod support;

use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A router sending `*@probe.test` to the PROBE connector, and the delivery probe with `params`.
fn setup(
    dir: &TestDir,
    params: &[(&'static str, &str)],
    connector: &str,
) -> (Mta, std::path::PathBuf) {
    let log = dir.path("delivery.log");
    let mut probe_params = vec![("log", log.display().to_string())];
    probe_params.extend(params.iter().map(|(k, v)| (*k, v.to_string())));
    dir.write(
        "agents.config",
        &agents_xml(
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
                Entry {
                    name: "Delivery Probe",
                    base_type: "DeliveryAgent",
                    factory: "Tests.DeliveryProbeFactory",
                    assembly: lib("route-probe").display().to_string(),
                    enabled: true,
                    params: probe_params,
                },
            ],
        ),
    );
    let mta = Mta::start(
        dir,
        &format!("[agents]\ntransport = \"agents.config\"\n[routing]\nretry_base_ms = 100\nretry_max_ms = 300\n[[delivery_agent_connectors]]\nname = \"Probe\"\naddress_spaces = [\"PROBE:*;1\"]\ndelivery_protocol = \"PROBE\"\n{connector}"),
        &[],
    );
    (mta, log)
}

fn count(log: &std::path::Path, event: &str) -> usize {
    probe_log(log)
        .iter()
        .filter(|l| l.starts_with(event))
        .count()
}

/// Sends one message per subject in one session.
fn send(mta: &Mta, subjects: &[&str]) {
    let mut smtp = Smtp::ehlo(mta.transport);
    for subject in subjects {
        let r = smtp.send_mail(
            "alice@example.test",
            &["x@probe.test"],
            &format!("Subject: {subject}\n\nhi\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    smtp.quit();
}

#[test]
fn a_connection_carries_up_to_max_messages_per_connection_items() {
    let dir = TestDir::new("da-batch");
    let (mta, log) = setup(
        &dir,
        &[],
        "max_concurrent_connections = 1\nmax_messages_per_connection = 3\n",
    );
    send(&mta, &["m1", "m2", "m3", "m4", "m5"]);
    assert!(
        wait_until(WAIT, || count(&log, "OnDeliverMailItem") == 5),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || count(&log, "OnCloseConnection") == 2));
    assert_eq!(count(&log, "OnOpenConnection"), 2, "{:?}", probe_log(&log));
}

#[test]
fn unregister_connection_ends_the_connection_after_the_item() {
    let dir = TestDir::new("da-unregister");
    let (mta, log) = setup(
        &dir,
        &[("unregister", "true")],
        "max_concurrent_connections = 1\n",
    );
    send(&mta, &["u1", "u2", "u3"]);
    assert!(
        wait_until(WAIT, || count(&log, "OnDeliverMailItem") == 3),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || count(&log, "OnCloseConnection") == 3));
    assert_eq!(count(&log, "OnOpenConnection"), 3, "{:?}", probe_log(&log));
}

#[test]
fn defer_queue_holds_the_whole_queue_for_its_delay() {
    let dir = TestDir::new("da-defer");
    let (mta, log) = setup(
        &dir,
        &[("defer_queue_subject", "busy"), ("defer_queue_ms", "2000")],
        "",
    );
    let started = Instant::now();
    send(&mta, &["busy"]);
    assert!(wait_until(WAIT, || count(&log, "OnDeliverMailItem") == 1));
    send(&mta, &["behind it"]);
    // While the queue waits, neither item is handed to the agent again.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(count(&log, "OnDeliverMailItem"), 1, "{:?}", probe_log(&log));
    assert!(
        wait_until(WAIT, || count(&log, "OnDeliverMailItem") == 3),
        "{}",
        mta.log()
    );
    assert!(started.elapsed() >= Duration::from_millis(2000));
    assert!(
        mta.maildir("alice").is_empty(),
        "both were delivered, no report"
    );
}

#[test]
fn fail_queue_fails_every_item_waiting_in_the_queue() {
    let dir = TestDir::new("da-fail");
    let (mta, log) = setup(
        &dir,
        &[("retry_subject", "wait"), ("fail_queue_subject", "gone")],
        "",
    );
    send(&mta, &["wait", "wait"]);
    assert!(
        wait_until(WAIT, || mta.queued("delivery-agent-Probe") == 2),
        "{}",
        mta.log()
    );
    send(&mta, &["gone"]);
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 3),
        "one report per item: {}",
        mta.log()
    );
    for report in mta.maildir("alice") {
        assert!(report.contains("the probe system is gone"), "{report}");
    }
    assert!(wait_until(WAIT, || mta.queued("delivery-agent-Probe") == 0));
    // The queue works again for what comes after.
    let before = count(&log, "OnDeliverMailItem");
    send(&mta, &["later"]);
    assert!(wait_until(WAIT, || count(&log, "OnDeliverMailItem") == before + 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mta.maildir("alice").len(),
        3,
        "no report for the later item"
    );
}

#[test]
fn a_delivery_agent_can_submit_a_new_message() {
    let dir = TestDir::new("da-submit");
    let (mta, _log) = setup(
        &dir,
        &[
            ("submit_subject", "tell bob"),
            ("submit_to", "bob@example.test"),
        ],
        "",
    );
    send(&mta, &["tell bob"]);
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("bob")[0].contains("Subject: submitted by the delivery probe"));
}
