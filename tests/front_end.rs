//! The Front End proxies in real time: a refusal anywhere reaches the client at the command that
//! caused it, a missing or busy Transport node makes way for the next at MAIL, and Transport's agents see the client
//! behind the Front End.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn transport_probe(dir: &TestDir, log: &std::path::Path, refuse: &str) -> String {
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("T", log).param("reject_rcpt", refuse)]),
    );
    "[agents]\ntransport = \"agents.config\"\n".to_string()
}

/// A Front End alone (`--roles frontend`) in a directory of its own, relaying to `nodes`.
/// The directory goes with the server (it is dropped after it).
fn front_end(name: &str, nodes: &[String]) -> (Mta, TestDir) {
    let dir = TestDir::new(name);
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mta = Mta::start_with(
        &dir,
        &[("frontend", &format!("transport_nodes = [{list}]"))],
        "",
        &["--roles", "frontend"],
    );
    (mta, dir)
}

#[test]
fn a_recipient_transport_refuses_is_refused_to_the_client_at_rcpt() {
    let dir = TestDir::new("fe-rcpt");
    let log = dir.path("probe.log");
    let mta = Mta::start(&dir, &transport_probe(&dir, &log, "bob@example.test"), &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    let r = smtp.cmd("RCPT TO:<bob@example.test>");
    assert_eq!((r.code, r.enhanced()), (550, "5.7.1".into()), "{r:?}");
    assert!(
        r.text().contains("probe T rejects"),
        "Transport's own reply: {r:?}"
    );
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: two of them\r\n\r\nhello\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert!(mta.maildir("bob").is_empty());
}

#[test]
fn without_a_reachable_transport_node_mail_is_refused_at_mail() {
    let dead = free_port();
    let (mta, _dir) = front_end("fe-no-transport", &[format!("127.0.0.1:{dead}")]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (451, "4.4.0".into()), "{r:?}");
    // The session goes on: the client may try again.
    let r = smtp.cmd("NOOP");
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
}

#[test]
fn transport_agents_see_the_client_behind_the_front_end_once() {
    let dir = TestDir::new("fe-xclient");
    let log = dir.path("probe.log");
    let mta = Mta::start(
        &dir,
        &transport_probe(&dir, &log, "nobody@example.test"),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    let port = smtp.local_port();
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: who\r\n\r\nhello\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    let connects: Vec<String> = probe_log(&log)
        .into_iter()
        .filter(|l| l.contains("OnConnect"))
        .collect();
    assert_eq!(connects.len(), 1, "one OnConnect per client: {connects:?}");
    assert!(
        connects[0].contains(&format!("remote=127.0.0.1:{port} ")),
        "the client's own address and port: {connects:?}"
    );
    assert!(connects[0].ends_with("tls=false"), "{connects:?}");
}

/// A client that started TLS with the Front End is seen with TLS by Transport's agents, though
/// the Front End's own session with Transport is not encrypted.
#[test]
fn transport_agents_see_the_tls_of_the_client_behind_the_front_end() {
    let dir = TestDir::new("fe-xclient-tls");
    let log = dir.path("probe.log");
    let mta = Mta::start(
        &dir,
        &transport_probe(&dir, &log, "nobody@example.test"),
        &[],
    );
    // A real TLS client: openssl's, after STARTTLS.
    let script = "sleep 1; printf 'EHLO client.test\r\nMAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n'; sleep 1; printf 'Subject: over tls\r\n\r\nhello\r\n.\r\n'; sleep 1; printf 'QUIT\r\n'; sleep 1";
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "({script}) | openssl s_client -quiet -starttls smtp -connect 127.0.0.1:{}",
            mta.frontend
        ))
        .output()
        .expect("openssl");
    let replies = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(replies.contains("354 "), "{replies}");
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{replies}\n{}",
        mta.log()
    );
    let connects: Vec<String> = probe_log(&log)
        .into_iter()
        .filter(|l| l.contains("OnConnect"))
        .collect();
    assert_eq!(connects.len(), 1, "{connects:?}");
    assert!(connects[0].ends_with("tls=true"), "{connects:?}");
}

#[test]
fn a_client_transport_refuses_at_connect_is_refused_at_mail() {
    let dir = TestDir::new("fe-connect-refused");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry::probe("T", &log).param("reject", "OnConnect")],
        ),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (550, "5.7.1".into()), "{r:?}");
    assert!(
        r.text().contains("probe T rejects"),
        "Transport's own reply: {r:?}"
    );
    smtp.quit();
}

/// A Transport node under back pressure answers MAIL with 452 4.3.1: the Front End takes the
/// client's transaction to the next node instead, and only when every node refuses for now is
/// the refusal the client's.
#[test]
fn a_transport_node_that_refuses_mail_for_now_makes_way_for_the_next() {
    let busy = Peer::with(PeerConfig {
        mail_reply: "452 4.3.1 Insufficient system resources, try again later\r\n".into(),
        ..PeerConfig::default()
    });
    let back_dir = TestDir::new("fe-busy-back");
    let back = Mta::start(&back_dir, "", &["--roles", "transport,mailbox"]);
    let back_node = format!("127.0.0.1:{}", back.transport);
    let (front, _front_dir) = front_end("fe-busy-front", &[busy.address(), back_node.clone()]);
    // Round-robin starts sessions at either node; each of them ends at the one that takes mail,
    // and the turns stay fair: half of the sessions start at the busy node.
    for i in 0..4 {
        let mut smtp = Smtp::ehlo(front.frontend);
        let r = smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("Subject: busy {i}\n\nx\n"),
        );
        assert_eq!(r.code, 250, "{r:?} {}", front.log());
        smtp.quit();
    }
    assert!(
        wait_until(WAIT, || back.maildir("alice").len() == 4),
        "{}",
        back.log()
    );
    assert_eq!(
        front
            .log()
            .matches("Transport node cannot take mail now; trying the next.")
            .count(),
        2,
        "{}",
        front.log()
    );
    assert_eq!(busy.connections().len(), 2);

    // A refusal for now that is the node's policy, not its load (an agent's rate limit), is
    // the client's: the Front End does not shop around for a node that says yes.
    let limited = Peer::with(PeerConfig {
        mail_reply: "451 4.7.1 Rate limited, try again later\r\n".into(),
        ..PeerConfig::default()
    });
    let (policy, _policy_dir) = front_end("fe-busy-policy", &[limited.address(), back_node]);
    let mut smtp = Smtp::ehlo(policy.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (451, "4.7.1".into()), "{r:?}");
    smtp.quit();

    // With the busy node alone, its refusal is the client's, and the session goes on.
    let (alone, _alone_dir) = front_end("fe-busy-alone", &[busy.address()]);
    let mut smtp = Smtp::ehlo(alone.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (452, "4.3.1".into()), "{r:?}");
    assert_eq!(smtp.cmd("NOOP").code, 250);
    smtp.quit();

    // Busy, then nothing reachable: the client is told the node is busy, not that none exists.
    let dead = free_port();
    let (none, _none_dir) = front_end(
        "fe-busy-dead",
        &[busy.address(), format!("127.0.0.1:{dead}")],
    );
    let mut smtp = Smtp::ehlo(none.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (452, "4.3.1".into()), "{r:?}");
    smtp.quit();
}

/// During a rolling upgrade a Front End may meet a Transport node of an older release, which
/// refuses XCLIENT attributes it does not know (`501`) and applies none: the Front End names
/// its client again without the newer ones, rather than going on unnamed.
#[test]
fn an_older_transport_node_still_learns_who_the_client_is() {
    let older = Peer::with(PeerConfig {
        xclient: true,
        xclient_unknown: vec!["TLS".into()],
        ..PeerConfig::default()
    });
    let (front, _dir) = front_end("fe-older-transport", &[older.address()]);
    let mut smtp = Smtp::ehlo(front.frontend);
    let port = smtp.local_port();
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: named\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?} {}", front.log());
    smtp.quit();
    let commands = older.connections()[0].commands.clone();
    let xclient: Vec<&String> = commands
        .iter()
        .filter(|c| c.starts_with("XCLIENT"))
        .collect();
    assert_eq!(xclient.len(), 2, "{commands:?}");
    assert!(xclient[0].contains(" TLS=NO"), "{commands:?}");
    assert_eq!(
        xclient[1],
        &format!("XCLIENT ADDR=127.0.0.1 PORT={port} PROTO=ESMTP HELO=client.test TRUSTED=NO"),
        "{commands:?}"
    );
    assert_eq!(commands[2], "EHLO mta.example.test", "{commands:?}");
}
