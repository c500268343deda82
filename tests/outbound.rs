//! The outbound SMTP client against next hops that behave as real servers do: it says QUIT on
//! every connection it closes, falls back to HELO, pipelines only when offered, and survives
//! replies and agent errors no reply line could carry.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn relay_to(peer: &Peer, extra: &str) -> String {
    format!(
        "[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n{extra}\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
        peer.address()
    )
}

fn send(mta: &Mta, to: &[&str], subject: &str) {
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "alice@example.test",
        to,
        &format!("Subject: {subject}\n\nhi\n"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
}

#[test]
fn idle_connections_are_closed_with_quit() {
    let peer = Peer::start();
    let dir = TestDir::new("quit");
    let mta = Mta::start(&dir, &relay_to(&peer, "idle_connection_ms = 300"), &[]);
    send(&mta, &["carol@far.test"], "one");
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    assert!(
        wait_until(Duration::from_secs(5), || peer
            .connections()
            .iter()
            .all(|c| c.quit && c.closed)),
        "{:?}",
        peer.connections()
    );
}

#[test]
fn a_next_hop_without_ehlo_gets_helo() {
    let peer = Peer::with(PeerConfig {
        ehlo: false,
        ..PeerConfig::default()
    });
    let dir = TestDir::new("helo-fallback");
    let mta = Mta::start(&dir, &relay_to(&peer, ""), &[]);
    send(&mta, &["carol@far.test"], "old server");
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    let commands = &peer.connections()[0].commands;
    assert!(commands[0].starts_with("EHLO "), "{commands:?}");
    assert!(commands[1].starts_with("HELO "), "{commands:?}");
    assert!(
        !commands
            .iter()
            .any(|c| c.contains("BODY=") || c.contains("NOTIFY=")),
        "no ESMTP parameters after HELO: {commands:?}"
    );
}

#[test]
fn commands_are_pipelined_only_when_the_next_hop_offers_it() {
    let peer = Peer::with(PeerConfig {
        extensions: vec!["8BITMIME".into()],
        ..PeerConfig::default()
    });
    let dir = TestDir::new("no-pipelining");
    let mta = Mta::start(&dir, &relay_to(&peer, ""), &[]);
    send(
        &mta,
        &["c1@far.test", "c2@far.test", "c3@far.test"],
        "one by one",
    );
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    assert_eq!(peer.delivered_to().len(), 3);
    assert!(
        peer.connections().iter().all(|c| !c.sent_ahead),
        "a command was sent before the previous reply: {:?}",
        peer.connections()
    );
}

#[test]
fn replies_too_long_for_one_line_never_stop_delivery() {
    let long = |c: char| std::iter::repeat_n(c, 700).collect::<String>();
    let peer = Peer::with(PeerConfig {
        rcpt_replies: vec![(
            "long@far.test".into(),
            format!(
                "550-5.1.1 {}\r\n550-5.1.1 {}\r\n550 5.1.1 end\r\n",
                long('x'),
                long('y')
            ),
        )],
        ..PeerConfig::default()
    });
    let greeting = Peer::with(PeerConfig {
        greeting: format!("554-{}\r\n554 {}\r\n", long('g'), long('h')),
        ..PeerConfig::default()
    });
    let dir = TestDir::new("long-replies");
    let mut mta = Mta::start(
        &dir,
        &format!(
            "{}\n[[send_connectors]]\nname = \"Rude\"\naddress_spaces = [\"SMTP:rude.test;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
            relay_to(&peer, ""),
            greeting.address()
        ),
        &[],
    );
    send(&mta, &["long@far.test"], "long rejection");
    send(&mta, &["x@rude.test"], "rude greeting");
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let report = &mta.maildir("alice")[0];
    assert!(
        report.contains("long@far.test") && report.contains("xxxx"),
        "{report}"
    );
    assert!(
        mta.wait_log("Delivery deferred.", 1, WAIT),
        "the rude host's message waits for a retry: {}",
        mta.log()
    );
    send(&mta, &["bob@example.test"], "still working");
    assert!(wait_until(WAIT, || mta.maildir("bob").len() == 1));
    assert!(mta.alive());
    assert!(!mta.log().contains("panicked"), "{}", mta.log());
}

#[test]
fn a_delivery_agent_error_with_control_characters_defers_the_item() {
    let dir = TestDir::new("agent-error-text");
    let log = dir.path("delivery.log");
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
                    params: vec![
                        ("log", log.display().to_string()),
                        ("fail", "OnDeliverMailItem".into()),
                    ],
                },
            ],
        ),
    );
    let mut mta = Mta::start(
        &dir,
        "[agents]\ntransport = \"agents.config\"\n[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n[[delivery_agent_connectors]]\nname = \"Probe\"\naddress_spaces = [\"PROBE:*;1\"]\ndelivery_protocol = \"PROBE\"\n",
        &[],
    );
    send(&mta, &["x@probe.test"], "agent error");
    assert!(mta.wait_log("Delivery deferred.", 1, WAIT), "{}", mta.log());
    assert!(
        mta.log()
            .contains("delivery probe fails in OnDeliverMailItem"),
        "{}",
        mta.log()
    );
    assert!(mta.alive());
    assert!(!mta.log().contains("panicked"), "{}", mta.log());
    assert_eq!(mta.queued("delivery-agent-Probe"), 1);
}

/// The Mailbox hop is another host when the roles are split: its replies are text from outside
/// like any next hop's. A reply of many long lines with control characters defers the copy
/// with a clean, bounded reason, and mail to the other recipients goes on.
#[test]
fn a_mailbox_hop_replying_with_long_lines_and_control_characters_never_stops_delivery() {
    let long = std::iter::repeat_n('x', 700).collect::<String>();
    let dir = TestDir::new("mailbox-hop-replies");
    // This process runs no Mailbox Transport: its [mailbox] address is the other host's.
    let mta = Mta::start(
        &dir,
        "[routing]\nretry_base_ms = 60000\nretry_max_ms = 60000\n",
        &["--roles", "frontend,transport"],
    );
    let mailbox = Peer::on_port(
        mta.mailbox,
        PeerConfig {
            rcpt_replies: vec![(
                "alice@example.test".into(),
                format!(
                    "450-4.2.1 {long}\r\n450-4.2.1 {long}\r\n450 4.2.1 busy\x07\x1b[31m now\r\n"
                ),
            )],
            ..PeerConfig::default()
        },
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "someone@elsewhere.test",
        &["alice@example.test", "bob@example.test"],
        "Subject: split roles\n\nhi\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    assert!(
        wait_until(WAIT, || mailbox.delivered_to() == ["bob@example.test"]),
        "{}",
        mta.log()
    );
    let config = mta.config.display().to_string();
    let listed = || {
        let (_, out, _) = run_mta(
            &mta.dir,
            &[
                "--config",
                &config,
                "message",
                "list",
                "--queue",
                "delivery-mailbox",
                "--json",
            ],
        );
        serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap_or_default()
    };
    assert!(wait_until(WAIT, || listed().len() == 1), "{}", mta.log());
    let waiting = &listed()[0];
    assert_eq!(waiting["recipients"][0], "alice@example.test");
    let reason = waiting["last_error"].as_str().unwrap_or_default();
    assert!(reason.starts_with("450 4.2.1"), "{reason}");
    assert!(
        !reason.chars().any(|c| c.is_control()),
        "no control character survives: {reason:?}"
    );
    // Each line cut at 500 bytes, as every reply from outside is.
    assert!(
        reason.split(" / ").all(|l| l.len() <= 512) && !reason.contains(&"x".repeat(600)),
        "bounded lines: {reason}"
    );
    let log = mta.log();
    assert!(!log.contains("panicked") && !log.contains('\x07'), "{log}");
}
