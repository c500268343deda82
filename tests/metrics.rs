//! The Prometheus endpoint, scraped with a real HTTP client (curl) while the real `mta` moves
//! mail: the counters move with the mail, the agents' calls are counted per agent and event,
//! refusals by their codes, and nothing but `GET /metrics` is served.

mod support;

use std::process::Command;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// `curl` against the endpoint: (HTTP status, body).
fn curl(port: u16, args: &[&str], path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The sum of the samples of `name` whose labels include every one of `labels`
/// (`service="transport"`).
fn value(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[test]
fn the_endpoint_counts_mail_agent_calls_and_refusals() {
    let dir = TestDir::new("metrics");
    let probe_log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("Counted", &probe_log)]),
    );
    let port = free_port();
    let mta = Mta::start(
        &dir,
        &format!(
            "[agents]\ntransport = \"agents.config\"\n[metrics]\nlisten = \"127.0.0.1:{port}\""
        ),
        &[],
    );
    let (status, before) = curl(port, &[], "/metrics");
    assert_eq!(status, 200, "{before}");
    assert!(before.ends_with("# EOF\n"), "{before}");
    assert_eq!(
        value(&before, "mta_messages_received_total", &[]),
        0.0,
        "{before}"
    );
    assert_eq!(
        value(
            &before,
            "mta_agent_pipeline_generation",
            &["service=\"transport\""]
        ),
        1.0,
        "{before}"
    );

    let mut smtp = Smtp::ehlo(mta.transport);
    let reply = smtp.send_mail(
        "sender@elsewhere.test",
        &["alice@example.test"],
        "Subject: counted\n\nhello\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    assert_eq!(smtp.cmd("MAIL FROM:<sender@elsewhere.test>").code, 250);
    let refused = smtp.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!((refused.code, refused.enhanced()), (550, "5.1.1".into()));
    smtp.quit();
    // One STARTTLS handshake that succeeds and one whose client answers in clear text.
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.quit()
s = smtplib.SMTP('127.0.0.1', {port})
s.ehlo('plain.test')
assert s.docmd('STARTTLS')[0] == 220
s.sock.sendall(b'EHLO not.tls\r\n')
s.close()
"#,
        port = mta.frontend
    ));
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );

    // The delivery's tracking record is written just after the Maildir file: poll.
    let mut after = String::new();
    let delivered = wait_until(WAIT, || {
        after = curl(port, &[], "/metrics").1;
        value(
            &after,
            "mta_messages_delivered_total",
            &["service=\"mailbox\""],
        ) == 1.0
    });
    assert!(delivered, "{after}");
    assert_eq!(
        value(
            &after,
            "mta_messages_received_total",
            &["service=\"transport\"", "connector=\"SMTP\""]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "mta_messages_sent_total",
            &["service=\"transport\"", "connector=\"delivery-mailbox\""]
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(
            &after,
            "mta_delivery_latency_seconds_count",
            &["service=\"transport\""]
        ),
        1.0,
        "{after}"
    );
    // Mailbox Transport measures its own: from the LMTP data to the Maildir file.
    assert_eq!(
        value(
            &after,
            "mta_delivery_latency_seconds_count",
            &["service=\"mailbox\""]
        ),
        1.0,
        "{after}"
    );
    // The probe handles every SMTP receive event: two MAIL, two RCPT (agents see a recipient
    // before the host's check refuses the unknown one, whose refusal is raised as OnReject).
    let calls = |event: &str| {
        let event = format!("event=\"{event}\"");
        let labels = ["service=\"transport\"", "agent=\"Counted\"", event.as_str()];
        (
            value(&after, "mta_agent_calls_total", &labels),
            value(&after, "mta_agent_call_duration_seconds_count", &labels),
        )
    };
    assert_eq!(calls("OnMailCommand"), (2.0, 2.0), "{after}");
    assert_eq!(calls("OnRcptCommand"), (2.0, 2.0), "{after}");
    assert_eq!(calls("OnReject"), (1.0, 1.0), "{after}");
    let rcpt = [
        "service=\"transport\"",
        "agent=\"Counted\"",
        "event=\"OnRcptCommand\"",
    ];
    assert_eq!(value(&after, "mta_agent_faults_total", &rcpt), 0.0);
    assert_eq!(
        value(
            &after,
            "mta_smtp_rejections_total",
            &[
                "service=\"transport\"",
                "code=\"550\"",
                "enhanced=\"5.1.1\""
            ]
        ),
        1.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "mta_smtp_sessions_total",
            &["service=\"transport\""]
        ) >= 1.0,
        "{after}"
    );
    // Every client has hung up: no Front End session stays open (the last ones end as the
    // server reads their end).
    assert!(
        wait_until(WAIT, || value(
            &curl(port, &[], "/metrics").1,
            "mta_smtp_sessions_open",
            &["service=\"frontend\""]
        ) == 0.0),
        "{after}"
    );
    let handshakes = |result: &str| {
        let result = format!("result=\"{result}\"");
        value(
            &after,
            "mta_smtp_tls_handshakes_total",
            &["service=\"frontend\"", result.as_str()],
        )
    };
    assert_eq!(
        (handshakes("ok"), handshakes("failed")),
        (1.0, 1.0),
        "{after}"
    );
    assert!(after.contains("mta_queue_messages{queue=\"submission\"}"));
    assert_eq!(value(&after, "mta_back_pressure_refusing", &[]), 0.0);

    // Nothing else is served.
    let (status, body) = curl(port, &[], "/");
    assert_eq!(status, 404, "{body}");
    assert_eq!(curl(port, &[], "/metrics/extra").0, 404);
    assert_eq!(curl(port, &["-X", "POST"], "/metrics").0, 405);
}

#[test]
fn agent_faults_timeouts_hung_calls_and_failed_reloads_are_counted() {
    let dir = TestDir::new("metrics-agents");
    let log = dir.path("probe.log");
    // A time limit of 1 s: NOOP takes 1.2 s (too slow, well before the 2 s at which a call is
    // abandoned), RSET 5 s (abandoned at 2 s), HELP panics.
    dir.write(
        "agents.config",
        &agents_xml(
            1000,
            &[
                Entry::probe("Slow", &log)
                    .param("sleep", "OnNoopCommand")
                    .param("sleep_ms", "1200"),
                Entry::probe("Stuck", &log)
                    .param("sleep", "OnRsetCommand")
                    .param("sleep_ms", "5000"),
                Entry::probe("Panicky", &log).param("panic", "OnHelpCommand"),
            ],
        ),
    );
    let port = free_port();
    let mta = Mta::start(
        &dir,
        &format!(
            "[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n[metrics]\nlisten = \"127.0.0.1:{port}\""
        ),
        &[],
    );
    for command in ["NOOP", "HELP", "RSET"] {
        let mut smtp = Smtp::ehlo(mta.transport);
        let reply = smtp.cmd(command);
        assert!(reply.code > 0, "{command}: {reply:?}");
    }
    let scrape = curl(port, &[], "/metrics").1;
    let of = |metric: &str, agent: &str, event: &str| {
        let agent = format!("agent=\"{agent}\"");
        let event = format!("event=\"{event}\"");
        value(&scrape, metric, &[agent.as_str(), event.as_str()])
    };
    let counts = |agent: &str, event: &str| {
        [
            "mta_agent_calls_total",
            "mta_agent_timeouts_total",
            "mta_agent_faults_total",
            "mta_agent_hung_calls_total",
        ]
        .map(|metric| of(metric, agent, event))
    };
    assert_eq!(
        counts("Slow", "OnNoopCommand"),
        [1.0, 1.0, 0.0, 0.0],
        "{scrape}"
    );
    // (A panic may also be slow: unwinding with a backtrace takes time. Not asserted.)
    let [calls, _, faults, hung] = counts("Panicky", "OnHelpCommand");
    assert_eq!([calls, faults, hung], [1.0, 1.0, 0.0], "{scrape}");
    assert_eq!(
        counts("Stuck", "OnRsetCommand"),
        [1.0, 1.0, 1.0, 1.0],
        "{scrape}"
    );

    // A broken agents file: the reload fails, the running pipeline (generation 1) stays.
    dir.write("agents.config", "<configuration><mexRuntime>");
    assert!(
        mta.wait_log("Agent pipeline reload failed", 1, WAIT),
        "{}",
        mta.log()
    );
    let scrape = curl(port, &[], "/metrics").1;
    let transport = ["service=\"transport\""];
    assert_eq!(
        value(
            &scrape,
            "mta_agent_pipeline_reload_failures_total",
            &transport
        ),
        1.0,
        "{scrape}"
    );
    assert_eq!(
        value(&scrape, "mta_agent_pipeline_generation", &transport),
        1.0,
        "{scrape}"
    );
}
