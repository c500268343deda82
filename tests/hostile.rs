//! Hostile input and faults against the real binary: garbage, NUL bytes, invalid UTF-8, slow
//! clients, connection floods, a full disk, and agents that panic in every SMTP event.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn garbage_nul_bytes_and_invalid_utf8_get_errors_and_the_server_goes_on() {
    let dir = TestDir::new("garbage");
    let mut mta = Mta::start(&dir, "", &[]);
    let (mut smtp, _) = Smtp::connect(mta.transport);
    assert_eq!(smtp.cmd("EHLO c.test").code, 250);
    smtp.send(b"MAIL FROM:<a\x00b@elsewhere.test>\r\n");
    assert!(smtp.read_reply().code >= 500, "NUL in a command");
    smtp.send(b"MAIL FROM:<\xff\xfe@elsewhere.test>\r\n");
    let r = smtp.read_reply();
    assert!(r.code >= 500, "invalid UTF-8 without SMTPUTF8: {r:?}");
    smtp.send(b"\x00\x01\x02\r\n");
    assert!(smtp.read_reply().code >= 500);
    // Pipelined garbage until the server gives up on the session.
    let mut garbage = Vec::new();
    for i in 0..40u8 {
        garbage.extend_from_slice(&[i.wrapping_mul(37), 0xfe, b' ', i, b'\r', b'\n']);
    }
    smtp.send(&garbage);
    let mut last = 0;
    for _ in 0..40 {
        last = smtp.read_reply().code;
        if last == 421 || last == 0 {
            break;
        }
    }
    assert_eq!(last, 421, "too many errors");
    // The server is unharmed.
    assert!(mta.alive());
    let mut again = Smtp::ehlo(mta.transport);
    assert_eq!(
        again
            .send_mail(
                "a@elsewhere.test",
                &["alice@example.test"],
                "Subject: fine\n\nx\n"
            )
            .code,
        250
    );
}

#[test]
fn a_slow_client_is_cut_off_at_the_session_limit() {
    let dir = TestDir::new("slow");
    let mta = Mta::start_with(
        &dir,
        &[(
            "transport",
            "idle_timeout_secs = 1\nsession_timeout_secs = 2",
        )],
        "",
        &[],
    );
    let (mut smtp, _) = Smtp::connect(mta.transport);
    let started = Instant::now();
    // One byte every 300 ms: never idle, never done.
    let mut closed = false;
    for b in b"EHLO a-very-slow-client.example.test and more and more and more"
        .iter()
        .cycle()
        .take(40)
    {
        if smtp_write(&mut smtp, &[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let r = smtp.read_reply();
    assert!(closed || r.code == 421, "{r:?}");
    if r.code == 421 {
        assert_eq!(r.enhanced(), "4.4.2");
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut off after {:?}",
        started.elapsed()
    );
}

fn smtp_write(smtp: &mut Smtp, bytes: &[u8]) -> std::io::Result<()> {
    let s = smtp.stream();
    s.write_all(bytes)
}

#[test]
fn a_connection_flood_is_capped_and_memory_stays_bounded() {
    let dir = TestDir::new("flood");
    let mta = Mta::start_with(
        &dir,
        &[("transport", "max_connections_per_ip = 50")],
        "",
        &[],
    );
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let pid = mta.pid();
    let before = rss(pid);
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let (smtp, greeting) = Smtp::connect(mta.transport);
        match greeting.code {
            220 => open.push(smtp),
            421 => refused += 1,
            other => panic!("unexpected greeting {other}"),
        }
    }
    assert_eq!(open.len(), 50, "the per-IP cap holds");
    assert_eq!(refused, 250);
    let during = rss(pid);
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KB to {during} KB"
    );
    drop(open);
    assert!(wait_until(WAIT, || {
        let (_s, g) = Smtp::connect(mta.transport);
        g.code == 220
    }));
}

#[test]
fn a_full_disk_answers_452_loses_nothing_and_recovers() {
    let dir = TestDir::new("diskfull");
    let data = dir.path("small-disk");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=4m",
            "tmpfs",
            data.to_str().unwrap(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let mta = Mta::start(&dir, "data_dir = \"small-disk\"\n", &[]);
    // Fill the disk, leaving a little room.
    let filler = data.join("filler");
    let free = || {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    std::fs::write(
        &filler,
        vec![0u8; (free().saturating_sub(400 * 1024)) as usize],
    )
    .unwrap();
    let body = "x".repeat(60 * 1024);
    let mut accepted = Vec::new();
    let mut full = None;
    for i in 0..40 {
        let mut smtp = Smtp::ehlo(mta.transport);
        let r = smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("Subject: fill {i}\n\n{body}\n"),
        );
        smtp.quit();
        match r.code {
            250 => accepted.push(format!("Subject: fill {i}")),
            _ => {
                full = Some(r);
                break;
            }
        }
    }
    let full = full.expect("the disk filled up");
    assert_eq!(
        (full.code, full.enhanced()),
        (452, "4.3.1".to_string()),
        "{full:?}"
    );
    // Room again: what was accepted is delivered, and new mail is accepted.
    std::fs::remove_file(&filler).unwrap();
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: after\n\nx\n"
        )
        .code,
        250
    );
    smtp.quit();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let got = maildir_messages(&data.join("mailboxes/alice"));
            accepted
                .iter()
                .all(|s| got.iter().any(|m| m.contains(s.as_str())))
                && got.iter().any(|m| m.contains("Subject: after"))
        }),
        "accepted {} before the disk filled; delivered {}\n{}",
        accepted.len(),
        maildir_messages(&data.join("mailboxes/alice")).len(),
        mta.log()
    );
    // Nothing stays pinned by the failed writes: with every queue empty, the journal is back
    // to its current segment (and at most the one before), not the disk it had filled.
    let journal = data.join("queue/journal");
    let segments = || -> Vec<u64> {
        std::fs::read_dir(&journal)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        wait_until(Duration::from_secs(30), || segments().len() <= 2
            && segments().iter().sum::<u64>() < 1024 * 1024),
        "journal segments left: {:?}",
        segments()
    );
}

#[test]
fn agents_panicking_in_every_smtp_event_never_take_the_host_down() {
    let dir = TestDir::new("panic-every-event");
    let log = dir.path("probe.log");
    let events = [
        "OnConnect",
        "OnHeloCommand",
        "OnEhloCommand",
        "OnStartTlsCommand",
        "OnAuthCommand",
        "OnEndOfAuthentication",
        "OnMailCommand",
        "OnRcptCommand",
        "OnDataCommand",
        "OnEndOfHeaders",
        "OnEndOfData",
        "OnNoopCommand",
        "OnRsetCommand",
        "OnHelpCommand",
        "OnReject",
        "OnDisconnect",
    ];
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("P", &log)]),
    );
    // Front End nodes elsewhere: this loopback client's OnConnect comes with the greeting.
    let mut mta = Mta::start_with(
        &dir,
        &[("transport", "frontend_nodes = [\"192.0.2.1\"]")],
        "[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n[tls]\nstarttls = false\n[auth]\nrequire_tls = false\n[[auth.users]]\nname = \"u\"\npassword = \"p\"\n",
        &[],
    );
    for (n, event) in events.iter().enumerate() {
        dir.replace(
            "agents.config",
            agents_xml(5000, &[Entry::probe("P", &log).param("panic", event)]).as_bytes(),
        );
        assert!(
            wait_until(WAIT, || mta.generation("transport") == n as u64 + 2),
            "{event}"
        );
        let (mut smtp, greeting) = Smtp::connect(mta.transport);
        if greeting.code == 220 {
            for line in [
                "HELO c.test",
                "EHLO c.test",
                "STARTTLS",
                "AUTH PLAIN AHUAcA==",
                "NOOP",
                "RSET",
                "HELP",
                "MAIL FROM:<a@elsewhere.test>",
                "RCPT TO:<alice@example.test>",
                "DATA",
            ] {
                let r = smtp.cmd(line);
                // A faulted command gets 451 4.3.0 (STARTTLS without TLS gets 454); none is
                // refused for good, and the session goes on.
                assert!(
                    r.code == 0 || r.code < 500 || r.code == 503 || r.code == 554,
                    "{event} {line}: {r:?}"
                );
                if r.code == 354 {
                    smtp.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
                    let r = smtp.read_reply();
                    assert!(
                        r.code == 250 || (r.code == 451 && r.enhanced() == "4.3.0"),
                        "{event}: {r:?}"
                    );
                }
            }
            let _ = smtp.cmd("FOO");
            smtp.quit();
        } else {
            assert_eq!(
                (greeting.code, greeting.enhanced()),
                (421, "4.3.0".to_string()),
                "{event}"
            );
        }
        assert!(mta.alive(), "the host died on a panic in {event}");
    }
    assert!(
        mta.log().matches("agent panicked").count() >= events.len() - 1,
        "{}",
        mta.log()
    );
    mta.stop();
}
