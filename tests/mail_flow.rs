//! Mail flowing through the three services: Front End proxying with a Transport node down,
//! agent submission, standard clients, and no loss across `kill -9`.

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn the_front_end_fails_over_to_a_live_transport_node_and_never_queues() {
    let dead = free_port(); // nothing listens there
    let dir = TestDir::new("failover2");
    let mut mta = Mta::start(&dir, "", &[]);
    let config = std::fs::read_to_string(&mta.config).unwrap().replace(
        "[frontend]\n",
        &format!(
            "[frontend]\ntransport_nodes = [\"127.0.0.1:{dead}\", \"127.0.0.1:{}\"]\n",
            mta.transport
        ),
    );
    mta.stop();
    std::fs::write(&mta.config, config).unwrap();
    mta.spawn(&[]);
    for i in 0..4 {
        let mut smtp = Smtp::ehlo(mta.frontend);
        let r = smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("Subject: failover {i}\n\nx\n"),
        );
        assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
        assert!(
            r.text().contains("Queued mail for delivery"),
            "the Transport node's own answer: {r:?}"
        );
        smtp.quit();
    }
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 4));
    assert!(mta
        .log()
        .contains("Transport node unavailable; trying the next."));
    let waiting = dir.path("mta-data/queue/delivery-mailbox");
    assert_eq!(
        std::fs::read_dir(&waiting).map(|d| d.count()).unwrap_or(0),
        0
    );
}

#[test]
fn mail_waits_while_mailbox_transport_is_down_and_drains_when_it_is_back() {
    let dir = TestDir::new("mailbox-down");
    let mut mta = Mta::start(&dir, "", &["--roles", "frontend,transport"]);
    for i in 0..3 {
        let mut smtp = Smtp::ehlo(mta.frontend);
        let r = smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("Subject: waiting {i}\n\nx\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
        smtp.quit();
    }
    let waiting = dir.path("mta-data/queue/delivery-mailbox");
    assert!(
        wait_until(WAIT, || std::fs::read_dir(&waiting)
            .map(|d| d.count())
            .unwrap_or(0)
            == 3),
        "{}",
        mta.log()
    );
    // The operator sees them waiting.
    let config = mta.config.to_str().unwrap().to_string();
    let (code, out, err) = run_mta(&dir.0, &["--config", &config, "queue", "list"]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("delivery-mailbox"))
        .unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("3"), "{out}");
    let submission = out
        .lines()
        .find(|l| l.starts_with("submission"))
        .unwrap_or_default();
    assert_eq!(
        submission.split_whitespace().nth(1),
        Some("0"),
        "handed over, out of the journal: {out}"
    );
    let (code, out, _) = run_mta(
        &dir.0,
        &["--config", &config, "queue", "show", "delivery-mailbox"],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("to alice@example.test") && l.contains("next hop mailbox"))
            .count(),
        3,
        "{out}"
    );
    mta.stop();
    mta.spawn(&[]);
    assert!(
        wait_until(Duration::from_secs(60), || mta.maildir("alice").len() == 3),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || std::fs::read_dir(&waiting)
        .map(|d| d.count())
        .unwrap_or(1)
        == 0));
}

#[test]
fn with_no_transport_node_the_front_end_answers_451_and_keeps_nothing() {
    let dir = TestDir::new("nonode");
    let mta = Mta::start(&dir, "", &["--roles", "frontend,mailbox"]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: x\n\nx\n",
    );
    assert_eq!((r.code, r.enhanced()), (451, "4.4.0".to_string()), "{r:?}");
    assert!(
        !dir.path("mta-data/queue").exists(),
        "the Front End stores nothing"
    );
}

#[test]
fn an_agent_can_submit_a_new_message() {
    let dir = TestDir::new("submit");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry::probe("S", &log).param("submit", "bob@example.test")],
        ),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: trigger\n\nx\n"
        )
        .code,
        250
    );
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("bob")[0].contains("Subject: submitted by probe S"));
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
}

#[test]
fn standard_clients_deliver_into_maildirs_other_tools_can_read() {
    let dir = TestDir::new("clients");
    let mta = Mta::start(&dir, "", &[]);
    let script = format!(
        "import smtplib\ns = smtplib.SMTP('127.0.0.1', {})\ns.ehlo('py.test')\n\
         assert s.has_extn('pipelining') and s.has_extn('size') and s.has_extn('8bitmime')\n\
         refused = s.sendmail('x@elsewhere.test', ['alice@example.test', 'bob@example.test'], 'Subject: from python\\r\\n\\r\\nhello\\r\\n.leading dot\\r\\n')\n\
         assert refused == {{}}, refused\ns.quit()\n",
        mta.frontend
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1
        && mta.maildir("bob").len() == 1));
    let message = &mta.maildir("alice")[0];
    assert!(message.contains("Subject: from python\n"));
    assert!(
        message.contains("\n.leading dot\n"),
        "dot-stuffing undone exactly once: {message:?}"
    );
    assert!(
        message.starts_with(
            "Return-Path: <x@elsewhere.test>\nDelivered-To: alice@example.test\nReceived: from "
        ),
        "{message}"
    );
    for sub in ["tmp", "new", "cur"] {
        assert!(dir
            .path(&format!("mta-data/mailboxes/alice/{sub}"))
            .is_dir());
    }
    assert_eq!(
        std::fs::read_dir(dir.path("mta-data/mailboxes/alice/tmp"))
            .unwrap()
            .count(),
        0
    );
    // An ordinary Maildir reader (Python's mailbox module) reads it.
    let reader = format!(
        "import mailbox\nbox = mailbox.Maildir('{}', create=False)\nsubjects = [m['Subject'] for m in box]\nassert subjects == ['from python'], subjects\n",
        dir.path("mta-data/mailboxes/alice").display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&reader)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    if Command::new("swaks").arg("--version").output().is_ok() {
        let out = Command::new("swaks")
            .args([
                "--server",
                &format!("127.0.0.1:{}", mta.frontend),
                "--from",
                "someone@elsewhere.test",
                "--to",
                "alice@example.test",
                "--header",
                "Subject: from swaks",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(wait_until(WAIT, || mta.maildir("alice").len() == 2));
        assert!(mta.maildir("alice")[1].contains("Subject: from swaks"));
    }
}

#[test]
fn every_message_answered_250_survives_kill_9() {
    let dir = TestDir::new("kill9");
    let mut mta = Mta::start(&dir, "", &[]);
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let port = mta.transport;
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let accepted = Arc::clone(&accepted);
            std::thread::spawn(move || {
                for i in 0..200 {
                    let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    drop(stream);
                    let id = format!("kill9-{t}-{i}");
                    let result = std::panic::catch_unwind(|| {
                        let (mut smtp, greeting) = Smtp::connect(port);
                        if greeting.code != 220 {
                            return false;
                        }
                        smtp.cmd("EHLO c.test");
                        let r = smtp.send_mail(
                            "a@elsewhere.test",
                            &["alice@example.test"],
                            &format!("Subject: {id}\n\nx\n"),
                        );
                        r.code == 250
                    });
                    match result {
                        Ok(true) => accepted.lock().unwrap().push(id),
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // let some messages through, then kill the process mid-load
    assert!(wait_until(WAIT, || accepted.lock().unwrap().len() >= 40));
    mta.kill9();
    for s in senders {
        let _ = s.join();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert!(!accepted.is_empty());
    mta.spawn(&[]);
    let delivered = || {
        let subjects: Vec<String> = mta
            .maildir("alice")
            .iter()
            .filter_map(|m| {
                m.lines()
                    .find(|l| l.starts_with("Subject: kill9-"))
                    .map(|l| l[9..].to_string())
            })
            .collect();
        subjects
    };
    let all_there = wait_until(Duration::from_secs(60), || {
        let got = delivered();
        accepted.iter().all(|id| got.contains(id))
    });
    let got = delivered();
    let lost: Vec<&String> = accepted.iter().filter(|id| !got.contains(id)).collect();
    assert!(
        all_there && lost.is_empty(),
        "{} accepted, {} lost: {lost:?}",
        accepted.len(),
        lost.len()
    );
    let duplicates = got.len() - {
        let mut unique = got.clone();
        unique.sort();
        unique.dedup();
        unique.len()
    };
    println!(
        "kill -9: {} accepted, all delivered, {duplicates} duplicate(s)",
        accepted.len()
    );
}

#[test]
fn pickup_and_replay_directories_submit_into_the_queue() {
    let dir = TestDir::new("directories");
    let mta = Mta::start(&dir, "[directories]\npoll_interval_ms = 50", &[]);
    dir.write(
        "mta-data/pickup/one.eml",
        "From: Ann <ann@example.test>\r\nTo: alice@example.test\r\nBcc: bob@example.test\r\nSubject: picked up\r\n\r\nhello\r\n",
    );
    dir.write("mta-data/pickup/broken.eml", "no header block here\r\n");
    dir.write(
        "mta-data/replay/two.eml",
        "X-Sender: <someone@elsewhere.test> ENVID=r1\r\nX-Receiver: <bob@example.test> NOTIFY=FAILURE\r\nSubject: replayed\r\n\r\nagain\r\n",
    );
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1
            && mta.maildir("bob").len() == 2),
        "{}",
        mta.log()
    );
    let alice = &mta.maildir("alice")[0];
    assert!(
        alice.contains("Subject: picked up") && !alice.contains("Bcc:"),
        "{alice}"
    );
    assert!(
        alice.contains("Message-ID: <") && alice.contains("Date: "),
        "{alice}"
    );
    let bob = mta.maildir("bob");
    let replayed = bob
        .iter()
        .find(|m| m.contains("Subject: replayed"))
        .expect("replayed message");
    assert!(
        !replayed.contains("X-Sender") && !replayed.contains("X-Receiver"),
        "{replayed}"
    );
    assert!(
        bob.iter().any(|m| m.contains("Subject: picked up")),
        "the Bcc recipient got it"
    );
    assert!(wait_until(WAIT, || dir
        .path("mta-data/pickup/broken.bad")
        .exists()));
    assert!(
        !dir.path("mta-data/pickup/one.eml").exists()
            && !dir.path("mta-data/pickup/one.tmp").exists()
    );
    assert!(!dir.path("mta-data/replay/two.eml").exists());
}

#[test]
fn the_outbox_is_submitted_to_transport_and_moved_to_sent() {
    let dir = TestDir::new("outbox");
    let mut mta = Mta::start(
        &dir,
        "[directories]\npoll_interval_ms = 50",
        &["--roles", "mailbox"],
    );
    // Transport is not running: the message waits in the outbox.
    dir.write(
        "mta-data/mailboxes/alice/.Outbox/new/1.M1P1Q1.client",
        "From: alice@example.test\r\nTo: bob@example.test\r\nSubject: from the outbox\r\n\r\nhi bob\r\n",
    );
    std::thread::sleep(Duration::from_millis(400));
    assert!(dir
        .path("mta-data/mailboxes/alice/.Outbox/new/1.M1P1Q1.client")
        .exists());
    // With Transport up, it goes out and into Sent.
    mta.stop();
    mta.spawn(&[]);
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("bob")[0].contains("Subject: from the outbox"));
    let sent = dir.path("mta-data/mailboxes/alice/.Sent/cur/1.M1P1Q1.client:2,S");
    assert!(wait_until(WAIT, || sent.exists()), "moved to Sent");
    assert!(!dir
        .path("mta-data/mailboxes/alice/.Outbox/new/1.M1P1Q1.client")
        .exists());
}
