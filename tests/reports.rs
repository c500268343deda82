//! Delivery status notifications from the sender's side: what can be known in the session is
//! refused in the session (no backscatter), reports to senders nobody vouched for carry headers
//! only, and reports are ones real readers (Python's email) can open.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A routing agent that adds `gone@far.test` to messages whose subject is `expand me`, and a
/// send connector to `peer` for every remote domain.
fn expanding_setup(dir: &TestDir, peer: &Peer, extra: &str) -> String {
    let log = dir.path("route.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry {
                name: "Route Probe",
                base_type: "RoutingAgent",
                factory: "Tests.RouteProbeFactory",
                assembly: lib("route-probe").display().to_string(),
                enabled: true,
                params: vec![
                    ("log", log.display().to_string()),
                    ("expand_subject", "expand me".into()),
                    ("add_recipient", "gone@far.test".into()),
                ],
            }],
        ),
    );
    format!(
        "[agents]\ntransport = \"agents.config\"\n[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n{extra}\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
        peer.address()
    )
}

fn gone_peer() -> Peer {
    Peer::with(PeerConfig {
        rcpt_replies: vec![(
            "gone@far.test".into(),
            "550 5.1.1 <gone@far.test>: no such user here\r\n".into(),
        )],
        ..PeerConfig::default()
    })
}

#[test]
fn a_routing_loop_from_an_anonymous_client_is_refused_in_the_session() {
    let peer = Peer::start();
    let dir = TestDir::new("backscatter");
    let mta = Mta::start(&dir, &expanding_setup(&dir, &peer, ""), &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<victim@other.test> RET=FULL").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    let mut data = String::new();
    for i in 0..21 {
        data.push_str(&format!(
            "Received: from hop{i}.test by hop{i}.test; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        ));
    }
    data.push_str("Subject: attack\r\n\r\nthe attacker's payload\r\n.\r\n");
    smtp.send(data.as_bytes());
    let r = smtp.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.4.6".into()), "{r:?}");
    smtp.quit();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        peer.connections().is_empty(),
        "nothing was sent to the victim"
    );
    assert!(mta.maildir("alice").is_empty());
}

#[test]
fn reports_to_anonymous_senders_carry_headers_only() {
    let peer = gone_peer();
    let dir = TestDir::new("headers-only");
    let mta = Mta::start(&dir, &expanding_setup(&dir, &peer, ""), &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<victim@other.test> RET=FULL").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: expand me\r\n\r\nthe secret payload\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    let report = wait_until(WAIT, || {
        peer.delivered_to()
            .contains(&"victim@other.test".to_string())
    });
    assert!(report, "{}", mta.log());
    let ndr = peer
        .messages()
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .find(|m| m.contains("multipart/report"))
        .unwrap();
    assert!(ndr.contains("text/rfc822-headers"), "{ndr}");
    assert!(!ndr.contains("message/rfc822"), "{ndr}");
    assert!(!ndr.contains("the secret payload"), "{ndr}");
    // The original's header fields are readable as they are, not encoded.
    assert!(ndr.contains("\nSubject: expand me\r\n"), "{ndr}");
    assert!(
        !ndr.to_ascii_lowercase()
            .contains("content-transfer-encoding: base64"),
        "{ndr}"
    );
}

#[test]
fn a_full_report_to_a_trusted_sender_is_readable_and_complete() {
    let peer = gone_peer();
    let dir = TestDir::new("full-report");
    let mta = Mta::start(&dir, &expanding_setup(&dir, &peer, ""), &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.cmd("MAIL FROM:<alice@example.test> RET=FULL ENVID=env+2B1")
            .code,
        250
    );
    assert_eq!(smtp.cmd("RCPT TO:<bob@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send("Subject: expand me\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe whole caf\u{e9} body\r\n.\r\n".as_bytes());
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let raw = mta.maildir_raw("alice").remove(0);
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("Return-Path: <>\n"), "{text}");
    assert!(text.contains("Remote-MTA: dns; 127.0.0.1"), "{text}");
    assert!(text.contains("no such user here"), "{text}");
    assert!(text.contains("Original-Envelope-Id: env+1"), "{text}");
    let message_id = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .unwrap_or("");
    assert!(message_id.ends_with("@mta.example.test>"), "{message_id}");
    assert!(
        !text.contains("Content-Transfer-Encoding: base64"),
        "{text}"
    );
    let path = dir.path("ndr.eml");
    std::fs::write(&path, &raw).unwrap();
    let out = python(&format!(
        r#"
import email, email.policy
msg = email.message_from_bytes(open({path:?}, 'rb').read(), policy=email.policy.default)
assert msg.get_content_type() == 'multipart/report', msg.get_content_type()
parts = list(msg.iter_parts())
assert parts[1].get_content_type() == 'message/delivery-status'
original = parts[2]
assert original.get_content_type() == 'message/rfc822', original.get_content_type()
inner = original.get_payload()[0]
print(inner['Subject'])
print(inner.get_content().strip())
"#,
        path = path.display().to_string()
    ));
    assert_eq!(out, "expand me\nthe whole caf\u{e9} body\n", "{text}");
}

#[test]
fn an_expired_message_reports_the_last_remote_reply() {
    let peer = Peer::with(PeerConfig {
        rcpt_replies: vec![(
            "slow@far.test".into(),
            "451 4.7.1 Greylisted, come back in a while\r\n".into(),
        )],
        ..PeerConfig::default()
    });
    let dir = TestDir::new("expiry-reply");
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 100\nretry_max_ms = 200\nexpiration_hours = 0\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
            peer.address()
        ),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "alice@example.test",
        &["slow@far.test"],
        "Subject: patience\n\nhi\n",
    );
    assert_eq!(r.code, 250);
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let report = &mta.maildir("alice")[0];
    assert!(report.contains("Status: 4.4.7"), "{report}");
    assert!(
        report.contains("Greylisted, come back in a while"),
        "{report}"
    );
    assert!(report.contains("Remote-MTA: dns; 127.0.0.1"), "{report}");
}
