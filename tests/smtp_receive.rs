//! SMTP receive over real sockets against the real binary: the protocol, its limits, the agent
//! events in order and the agents' actions, smuggling attempts.

mod support;

use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A Transport with these agents. Its Front End nodes are elsewhere, so a client on loopback
/// is an ordinary client whose OnConnect comes with the greeting (a Front End node's waits for
/// its first command, which may name the real client with XCLIENT).
fn transport_with(dir: &TestDir, entries: &[Entry<'_>], listener: &str) -> Mta {
    dir.write("agents.config", &agents_xml(5000, entries));
    Mta::start_with(
        dir,
        &[("transport", "frontend_nodes = [\"192.0.2.1\"]")],
        &format!("[agents]\ntransport = \"agents.config\"\n{listener}"),
        &[],
    )
}

#[test]
fn a_full_conversation_raises_every_receive_event_in_protocol_order() {
    let dir = TestDir::new("events");
    let log = dir.path("probe.log");
    let mta = transport_with(
        &dir,
        &[Entry::probe("P", &log)],
        "[tls]\nstarttls = false\n",
    );
    let (mut smtp, greeting) = Smtp::connect(mta.transport);
    assert_eq!(greeting.code, 220);
    assert_eq!(smtp.cmd("HELO old.client.test").code, 250);
    let ehlo = smtp.cmd("EHLO client.test");
    assert_eq!(ehlo.code, 250);
    for keyword in [
        "PIPELINING",
        "SIZE 37748736",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "DSN",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == keyword),
            "{keyword} missing: {ehlo:?}"
        );
    }
    assert_eq!(smtp.cmd("STARTTLS").code, 454);
    assert_eq!(smtp.cmd("AUTH PLAIN AHVzZXIAcGFzcw==").code, 502);
    assert_eq!(
        smtp.cmd("MAIL FROM:<a@elsewhere.test> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=env1")
            .code,
        250
    );
    assert_eq!(
        smtp.cmd(
            "RCPT TO:<alice@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.test"
        )
        .code,
        250
    );
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: events\r\n\r\nbody\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    assert_eq!(smtp.cmd("HELP").code, 214);
    assert_eq!(smtp.cmd("NOOP").code, 250);
    assert_eq!(smtp.cmd("RSET").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 503);
    smtp.quit();
    assert!(wait_until(WAIT, || probe_events(&log, "P")
        .last()
        .map(String::as_str)
        == Some("OnDisconnect")));
    assert_eq!(
        probe_events(&log, "P"),
        [
            "OnConnect",
            "OnHeloCommand",
            "OnEhloCommand",
            "OnStartTlsCommand",
            "OnReject",
            "OnAuthCommand",
            "OnReject",
            "OnMailCommand",
            "OnRcptCommand",
            "OnDataCommand",
            "OnEndOfHeaders",
            "OnEndOfData",
            "OnHelpCommand",
            "OnNoopCommand",
            "OnRsetCommand",
            "OnReject",
            "OnDisconnect",
        ]
    );
    let lines = probe_log(&log);
    let find = |event: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(" {event} ")))
            .cloned()
            .unwrap()
    };
    assert!(find("OnConnect").contains("service=transport"));
    assert!(find("OnEhloCommand").ends_with("domain=client.test"));
    assert!(
        find("OnMailCommand")
            .ends_with("from=a@elsewhere.test size=100 body=8BITMIME envid=env1 ret=HDRS"),
        "{}",
        find("OnMailCommand")
    );
    assert!(
        find("OnRcptCommand").contains(
            "recipient=alice@example.test notify=SUCCESS,FAILURE orcpt=rfc822;alice@example.test"
        ),
        "{}",
        find("OnRcptCommand")
    );
    assert!(find("OnEndOfHeaders").ends_with("subject=events"));
    assert!(find("OnReject").contains("command=STARTTLS response=454 4.7.0"));
    assert!(find("OnDisconnect").ends_with("reason=quit"));
}

#[test]
fn agent_rejects_at_each_command_send_the_agents_response() {
    let dir = TestDir::new("rejects");
    let log = dir.path("probe.log");
    for (event, at) in [
        ("OnConnect", 0),
        ("OnEhloCommand", 1),
        ("OnMailCommand", 2),
        ("OnRcptCommand", 3),
        ("OnDataCommand", 4),
        ("OnEndOfHeaders", 5),
        ("OnEndOfData", 5),
    ] {
        let dir = TestDir::new("reject-one");
        let mta = transport_with(&dir, &[Entry::probe("R", &log).param("reject", event)], "");
        let (mut smtp, greeting) = Smtp::connect(mta.transport);
        let steps: [&dyn Fn(&mut Smtp) -> Reply; 5] = [
            &|s| s.cmd("EHLO client.test"),
            &|s| s.cmd("MAIL FROM:<a@elsewhere.test>"),
            &|s| s.cmd("RCPT TO:<alice@example.test>"),
            &|s| s.cmd("DATA"),
            &|s| {
                s.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
                s.read_reply()
            },
        ];
        let mut replies = vec![greeting];
        for step in steps.iter().take(at) {
            replies.push(step(&mut smtp));
        }
        let last = replies.last().unwrap();
        assert_eq!(
            (last.code, last.text()),
            (550, "5.7.1 probe R rejects".to_string()),
            "{event}: {replies:?}"
        );
        for earlier in &replies[..replies.len() - 1] {
            assert!(earlier.code < 400, "{event}: {replies:?}");
        }
        assert!(mta.maildir("alice").is_empty());
    }
}

#[test]
fn discard_quarantine_disconnect_and_edits_take_effect() {
    let dir = TestDir::new("actions");
    let log = dir.path("probe.log");
    let mta = transport_with(
        &dir,
        &[Entry::probe("Q", &log).param("discard", "OnEndOfData")],
        "",
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: dropped\n\nx\n",
    );
    assert_eq!(r.code, 250, "discard accepts");
    smtp.quit();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        mta.maildir("alice").is_empty(),
        "discarded messages are not delivered"
    );
    drop(mta);

    let dir = TestDir::new("quarantine");
    let mta = transport_with(
        &dir,
        &[Entry::probe("Q", &log).param("quarantine", "OnEndOfHeaders")],
        "",
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: held\n\nx\n"
        )
        .code,
        250
    );
    smtp.quit();
    let quarantine = dir.path("mta-data/queue/quarantine");
    assert!(
        wait_until(WAIT, || std::fs::read_dir(&quarantine)
            .map(|d| d.count())
            .unwrap_or(0)
            == 1),
        "{}",
        mta.log()
    );
    let held = std::fs::read_dir(&quarantine)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(held).unwrap();
    assert!(text.contains("probe says so") && text.contains("Subject: held"));
    assert!(mta.maildir("alice").is_empty());
    drop(mta);

    let dir = TestDir::new("disconnect");
    let mta = transport_with(
        &dir,
        &[Entry::probe("D", &log).param("disconnect", "OnNoopCommand")],
        "",
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    smtp.send(b"NOOP\r\n");
    assert_eq!(
        smtp.read_reply().code,
        0,
        "the connection is closed without a reply"
    );
    drop(mta);

    // Header and body edits by the header stamper sample are in the delivered message.
    let dir = TestDir::new("edits");
    let stamper = Entry {
        name: "Stamper",
        base_type: "SmtpReceiveAgent",
        factory: "Mta.Samples.HeaderStamperFactory",
        assembly: lib("header-stamper").display().to_string(),
        enabled: true,
        params: vec![
            ("header", "X-Stamped".into()),
            ("value", "yes".into()),
            ("disclaimer", "-- scanned".into()),
        ],
    };
    let mta = transport_with(&dir, &[stamper], "");
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: s\n\nhello\n"
        )
        .code,
        250
    );
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    let message = &mta.maildir("alice")[0];
    assert!(message.contains("X-Stamped: yes\n"), "{message}");
    assert!(message.ends_with("hello\n-- scanned\n"), "{message:?}");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let dir = TestDir::new("pipelining");
    let mta = Mta::start(&dir, "", &[]);
    let (mut smtp, _) = Smtp::connect(mta.transport);
    smtp.send(b"EHLO c.test\r\nMAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..6).map(|_| smtp.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 550, 250, 354]);
    smtp.send(b"Subject: p\r\n\r\nx\r\n.\r\nNOOP\r\nQUIT\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    assert_eq!(smtp.read_reply().code, 250);
    assert_eq!(smtp.read_reply().code, 221);
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1
        && mta.maildir("bob").len() == 1));
}

#[test]
fn size_limits_are_enforced_with_552() {
    let dir = TestDir::new("size");
    let mta = Mta::start_with(&dir, &[("transport", "max_message_size = 2000")], "", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test> SIZE=5000");
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4".to_string()), "{r:?}");
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "x".repeat(5000)).as_bytes());
    let r = smtp.read_reply();
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4".to_string()), "{r:?}");
    // the session goes on and a small message still passes
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: small\n\nok\n",
    );
    assert_eq!(r.code, 250);
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert!(mta.maildir("alice")[0].contains("Subject: small"));
}

#[test]
fn anonymous_clients_cannot_relay_but_trusted_and_local_recipients_work() {
    let dir = TestDir::new("relay");
    let mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    for (rcpt, code, enhanced) in [
        ("bob@other.test", 550, "5.7.1"),
        ("@relay.other.test:bob@other.test", 550, "5.7.1"),
        ("bob@[127.0.0.1]", 550, "5.7.1"),
        ("bob@OTHER.TEST", 550, "5.7.1"),
        ("bob@example.test.other.test", 550, "5.7.1"),
        ("bob!other.test@example.test", 550, "5.1.1"),
        ("\"bob@other.test\"@example.test", 550, "5.1.1"),
        ("bob%other.test@example.test", 550, "5.1.1"),
        ("nobody@example.test", 550, "5.1.1"),
        ("ALICE@EXAMPLE.TEST", 250, "2.1.5"),
    ] {
        let r = smtp.cmd(&format!("RCPT TO:<{rcpt}>"));
        assert_eq!(
            (r.code, r.enhanced()),
            (code, enhanced.to_string()),
            "{rcpt}: {r:?}"
        );
    }
    smtp.quit();
    drop(mta);

    let dir = TestDir::new("trusted");
    let mta = Mta::start_with(
        &dir,
        &[("frontend", "trusted = [\"127.0.0.0/8\"]")],
        "",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<a@example.test>").code, 250);
    assert_eq!(
        smtp.cmd("RCPT TO:<bob@other.test>").code,
        250,
        "trusted networks may relay"
    );
}

#[test]
fn smuggling_attempts_never_split_a_message() {
    let dir = TestDir::new("smuggling");
    let mta = Mta::start(&dir, "", &[]);
    for (i, separator) in ["\n.\n", "\r.\n", "\n.\r\n", "\r\n.\n", "\r.\r\n"]
        .iter()
        .enumerate()
    {
        let mut smtp = Smtp::ehlo(mta.transport);
        assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
        assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
        assert_eq!(smtp.cmd("DATA").code, 354);
        let payload = format!(
            "Subject: smuggle {i}\r\n\r\nbefore{separator}MAIL FROM:<evil@elsewhere.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"
        );
        smtp.send(payload.as_bytes());
        let r = smtp.read_reply();
        assert_eq!(r.code, 250, "{separator:?}: {r:?}");
        // nothing else was answered: the next reply is for our NOOP
        assert_eq!(smtp.cmd("NOOP").code, 250, "{separator:?}");
        smtp.quit();
    }
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        mta.maildir("bob").is_empty(),
        "no smuggled message reached bob"
    );
    for message in mta.maildir("alice") {
        assert!(
            message.contains("MAIL FROM:<evil@elsewhere.test>"),
            "the smuggled text stays inside: {message:?}"
        );
    }
}

#[test]
fn protocol_errors_get_the_right_codes_and_too_many_close_the_session() {
    let dir = TestDir::new("errors");
    let mta = Mta::start(&dir, "", &[]);
    let (mut smtp, _) = Smtp::connect(mta.transport);
    let table: &[(&str, u16, &str)] = &[
        ("MAIL FROM:<a@elsewhere.test>", 503, "5.5.1"),
        ("EHLO c.test", 250, ""),
        ("RCPT TO:<alice@example.test>", 503, "5.5.1"),
        ("DATA", 503, "5.5.1"),
        ("FOO bar", 500, "5.5.2"),
        ("MAIL FROM:<not an address>", 501, "5.1.7"),
        ("VRFY alice", 252, "2.5.0"),
        ("MAIL FROM:<a@elsewhere.test>", 250, "2.1.0"),
        ("MAIL FROM:<a@elsewhere.test>", 503, "5.5.1"),
        ("DATA", 554, "5.5.1"),
        ("BDAT 10 LAST", 502, "5.5.1"),
    ];
    for (line, code, enhanced) in table {
        let r = smtp.cmd(line);
        assert_eq!(r.code, *code, "{line}: {r:?}");
        if !enhanced.is_empty() {
            assert_eq!(r.enhanced(), *enhanced, "{line}: {r:?}");
        }
    }
    smtp.send(b"NOOP\n");
    let r = smtp.read_reply();
    assert_eq!(
        (r.code, r.enhanced()),
        (500, "5.5.2".to_string()),
        "bare LF: {r:?}"
    );
    smtp.send(format!("NOOP {}\r\n", "x".repeat(5000)).as_bytes());
    let r = smtp.read_reply();
    assert_eq!(
        (r.code, r.enhanced()),
        (500, "5.5.6".to_string()),
        "long line: {r:?}"
    );
    // keep erring until the server gives up
    let mut last = Reply {
        code: 0,
        lines: vec![],
    };
    for _ in 0..30 {
        last = smtp.cmd("FOO");
        if last.code == 421 {
            break;
        }
    }
    assert_eq!(
        (last.code, last.enhanced()),
        (421, "4.7.0".to_string()),
        "{last:?}"
    );
    assert!(smtp.closed());
}

#[test]
fn idle_sessions_time_out_and_connections_per_ip_are_capped() {
    let dir = TestDir::new("limits");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("T", &log)]),
    );
    let mta = Mta::start_with(
        &dir,
        &[(
            "transport",
            "idle_timeout_secs = 1\nmax_connections_per_ip = 2",
        )],
        "[agents]\ntransport = \"agents.config\"",
        &[],
    );
    let started = Instant::now();
    let mut idle = Smtp::ehlo(mta.transport);
    let r = idle.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.4.2".to_string()), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(wait_until(WAIT, || probe_log(&log)
        .iter()
        .any(|l| l.ends_with("OnDisconnect reason=timeout"))));

    // The timed-out session gives its slot back as its task ends, just after OnDisconnect.
    let mut pair = None;
    assert!(wait_until(WAIT, || {
        pair = None;
        let (a, ga) = Smtp::connect(mta.transport);
        let (b, gb) = Smtp::connect(mta.transport);
        let both = (ga.code, gb.code) == (220, 220);
        pair = Some((a, b));
        both
    }));
    let (_c, gc) = Smtp::connect(mta.transport);
    assert_eq!(gc.code, 421, "{gc:?}");
    assert!(gc.text().starts_with("4.7.0"));
}

#[test]
fn starttls_then_auth_lets_a_user_relay_and_auth_needs_tls() {
    let dir = TestDir::new("tls");
    let log = dir.path("probe.log");
    dir.write(
        "fetagents.config",
        &agents_xml(5000, &[Entry::probe("T", &log)]),
    );
    let mta = Mta::start(
        &dir,
        "[agents]\nfrontend = \"fetagents.config\"\n[[auth.users]]\nname = \"carol@example.test\"\npassword = \"s3cret\"\n",
        &[],
    );
    assert!(
        dir.path("mta-data/tls/cert.pem").exists(),
        "a self-signed certificate was generated"
    );

    // In clear: STARTTLS is offered, AUTH is not, and asking for it needs encryption.
    let mut smtp = Smtp::ehlo(mta.frontend);
    let ehlo = smtp.cmd("EHLO c.test");
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "{ehlo:?}"
    );
    let r = smtp.cmd("AUTH PLAIN AGNhcm9sQGV4YW1wbGUudGVzdABzM2NyZXQ=");
    assert_eq!((r.code, r.enhanced()), (538, "5.7.11".to_string()), "{r:?}");
    smtp.quit();

    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.ehlo('py.test')
s.starttls(context=ctx)
s.ehlo('py.test')
assert s.has_extn('auth'), s.esmtp_features
try:
    s.login('carol@example.test', 'wrong')
    raise SystemExit('wrong password accepted')
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login('carol@example.test', 's3cret')
refused = s.sendmail('carol@example.test', ['someone@far.test', 'alice@example.test'], 'Subject: tls\r\n\r\nover tls\r\n')
assert refused == {{}}, refused
s.quit()
s = smtplib.SMTP('127.0.0.1', {port})
s.ehlo('py.test')
s.starttls(context=ctx)
s.ehlo('py.test')
s.esmtp_features['auth'] = 'LOGIN'
s.login('carol@example.test', 's3cret')
s.quit()
"#,
        port = mta.frontend
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert!(
        mta.maildir("alice")[0].contains("with ESMTPSA"),
        "{}",
        mta.maildir("alice")[0]
    );
    // the relayed recipient was accepted and parked (no Send connector yet)
    assert!(wait_until(WAIT, || std::fs::read_dir(
        dir.path("mta-data/queue/unreachable")
    )
    .map(|d| d.count())
    .unwrap_or(0)
        == 1));
    assert!(wait_until(WAIT, || probe_log(&log).iter().any(
        |l| l.contains("OnEndOfAuthentication identity=carol@example.test")
    )));
    let events = probe_events(&log, "T");
    assert!(
        events.contains(&"OnStartTlsCommand".to_string())
            && events.contains(&"OnAuthCommand".to_string())
    );
}

#[test]
fn commands_pipelined_behind_starttls_are_discarded() {
    let dir = TestDir::new("tls-inject");
    let mta = Mta::start(&dir, "", &[]);
    let (mut smtp, _) = Smtp::connect(mta.frontend);
    assert_eq!(smtp.cmd("EHLO c.test").code, 250);
    // An attacker appends a command after STARTTLS in clear text.
    smtp.send(b"STARTTLS\r\nMAIL FROM:<injected@elsewhere.test>\r\n");
    let r = smtp.read_reply();
    assert_eq!(r.code, 220, "{r:?}");
    // We do not handshake: the server must not have answered the injected command in clear.
    smtp.send(b"\x16\x03\x01\x00\x05hello");
    let r = smtp.read_reply();
    assert_ne!(
        r.code, 250,
        "the injected MAIL must not be processed: {r:?}"
    );
}

#[test]
fn permission_groups_decide_who_may_submit_and_relay() {
    let dir = TestDir::new("permissions");
    let mta = Mta::start_with(
        &dir,
        &[("frontend", "permission_groups = [\"ExchangeUsers\"]")],
        "[auth]\nrequire_tls = false\n[[auth.users]]\nname = \"dave\"\npassword = \"pw\"\n",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
    assert_eq!(
        (r.code, r.enhanced()),
        (530, "5.7.0".to_string()),
        "anonymous users may not submit: {r:?}"
    );
    // AUTH PLAIN "\0dave\0pw"
    assert_eq!(smtp.cmd("AUTH PLAIN AGRhdmUAcHc=").code, 235);
    assert_eq!(smtp.cmd("MAIL FROM:<dave@example.test>").code, 250);
    assert_eq!(
        smtp.cmd("RCPT TO:<someone@far.test>").code,
        250,
        "authenticated users relay"
    );
    smtp.quit();
    drop(mta);

    let dir = TestDir::new("permissions-bad");
    dir.write(
        "mta.toml",
        "[frontend]\npermission_groups = [\"Everyone\"]\n",
    );
    let (code, _, err) = run_mta(
        &dir.0,
        &["--config", dir.path("mta.toml").to_str().unwrap(), "run"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("unknown permission group \"Everyone\": expected AnonymousUsers, ExchangeUsers or ExchangeServers"), "{err}");
}

#[test]
fn recipient_limits_and_remote_ranges_are_enforced() {
    let dir = TestDir::new("rcpt-limit");
    let mta = Mta::start_with(
        &dir,
        &[
            ("transport", "max_recipients = 2"),
            ("frontend", "remote_ranges = [\"192.0.2.0/24\"]"),
        ],
        "",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<bob@example.test>").code, 250);
    let r = smtp.cmd("RCPT TO:<postmaster@example.test>");
    assert_eq!((r.code, r.enhanced()), (452, "4.5.3".to_string()), "{r:?}");
    smtp.quit();
    // Loopback is not in the Front End's remote ranges.
    let (_, greeting) = Smtp::connect(mta.frontend);
    assert_eq!(
        (greeting.code, greeting.enhanced()),
        (554, "5.7.1".to_string()),
        "{greeting:?}"
    );
}

#[test]
fn an_invalid_agents_file_at_start_up_is_fatal_with_its_position() {
    let dir = TestDir::new("fatal");
    dir.write("agents.config", "<configuration><mexRuntime><agentList><agent name=\"x\"/></agentList></mexRuntime></configuration>");
    dir.write("mta.toml", "allow_root_agents = true\n[agents]\ntransport = \"agents.config\"\n[frontend]\nlisten = \"127.0.0.1:0\"\n[transport]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n");
    let (code, _, err) = run_mta(
        &dir.0,
        &["--config", dir.path("mta.toml").to_str().unwrap(), "run"],
    );
    assert_ne!(code, 0);
    let file = dir.path("agents.config");
    assert!(
        err.contains(&format!(
            "{}:1:39: <agent> lacks the required attribute baseType",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn a_local_or_null_sender_does_not_open_the_relay() {
    let dir = TestDir::new("relay-senders");
    let mta = Mta::start(&dir, "", &[]);
    for sender in ["", "alice@example.test", "postmaster@example.test"] {
        let mut smtp = Smtp::ehlo(mta.frontend);
        assert_eq!(
            smtp.cmd(&format!("MAIL FROM:<{sender}>")).code,
            250,
            "{sender}"
        );
        let r = smtp.cmd("RCPT TO:<victim@other.test>");
        assert_eq!(
            (r.code, r.enhanced()),
            (550, "5.7.1".to_string()),
            "sender {sender:?}: {r:?}"
        );
        smtp.quit();
    }
    // `<postmaster>` without a domain names a recipient only (RFC 5321 4.1.1.3).
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<postmaster>").code, 501);
    smtp.quit();
    let unreachable = dir.path("mta-data/queue/unreachable");
    assert_eq!(
        std::fs::read_dir(&unreachable)
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing was relayed"
    );
}

/// An SMTP receive agent that rewrites recipients at OnRcptCommand, on the Front End (whose
/// loopback clients are anonymous) and on a Transport that trusts no one: the host checks what
/// the agent leaves, so an alias of a mailbox is accepted and delivered to it, an unknown user
/// the agent ignores still gets 5.1.1, an agent's reject stands, and a rewrite to a remote
/// domain does not open the relay.
#[test]
fn rcpt_agents_rewrite_recipients_before_the_host_checks_them() {
    let entry = |name: &'static str, log: &std::path::Path| {
        Entry::probe(name, log)
            .param("rewrite_rcpt", "sales@example.test=alice@example.test")
            .param("rewrite_rcpt", "outside@example.test=bob@other.test")
            .param("reject_rcpt", "ghost@example.test")
    };
    for service in ["frontend", "transport"] {
        let dir = TestDir::new("rcpt-rewrite");
        let log = dir.path("probe.log");
        let name = if service == "frontend" { "F" } else { "T" };
        let file = if service == "frontend" {
            "fetagents.config"
        } else {
            "agents.config"
        };
        dir.write(file, &agents_xml(5000, &[entry(name, &log)]));
        let mta = Mta::start_with(
            &dir,
            &[(
                "transport",
                "trusted = []\nfrontend_nodes = [\"192.0.2.1\"]",
            )],
            &format!("[agents]\n{service} = \"{file}\"\n"),
            &[],
        );
        let port = if service == "frontend" {
            mta.frontend
        } else {
            mta.transport
        };
        let mut smtp = Smtp::ehlo(port);
        assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
        for (rcpt, code, enhanced) in [
            ("sales@example.test", 250, "2.1.5"),
            ("nobody@example.test", 550, "5.1.1"),
            ("outside@example.test", 550, "5.7.1"),
            ("bob@other.test", 550, "5.7.1"),
            ("ghost@example.test", 550, "5.7.1"),
        ] {
            let r = smtp.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert_eq!(
                (r.code, r.enhanced()),
                (code, enhanced.to_string()),
                "{service} {rcpt}: {r:?}"
            );
            if rcpt == "ghost@example.test" {
                assert_eq!(r.text(), format!("5.7.1 probe {name} rejects"), "{r:?}");
            }
        }
        assert_eq!(smtp.cmd("DATA").code, 354, "{service}");
        smtp.send(b"Subject: for sales\r\n\r\nan alias\r\n.\r\n");
        assert_eq!(smtp.read_reply().code, 250, "{service}");
        smtp.quit();
        assert!(
            wait_until(WAIT, || mta.maildir("alice").len() == 1),
            "{service}: {}",
            mta.log()
        );
        assert!(mta.maildir("alice")[0].contains("Subject: for sales"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            mta.maildir("bob").is_empty() && mta.maildir("alice").len() == 1,
            "{service}: nothing else was delivered"
        );
        // The agent saw every recipient, those the host then refused included.
        let seen: Vec<String> = probe_log(&log)
            .iter()
            .filter(|l| l.contains(" OnRcptCommand "))
            .filter_map(|l| l.split("recipient=").nth(1))
            .filter_map(|d| d.split(' ').next())
            .map(str::to_string)
            .collect();
        assert_eq!(
            seen,
            [
                "sales@example.test",
                "nobody@example.test",
                "outside@example.test",
                "bob@other.test",
                "ghost@example.test"
            ],
            "{service}"
        );
    }
}
