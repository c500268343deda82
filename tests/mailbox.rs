//! Mailbox Transport as Maildir readers and senders see it: files that Dovecot-style readers
//! take (LF line endings, Return-Path, Delivered-To), per-recipient answers so a retry carries
//! only what failed, and outbox recipients Transport refuses reported back to the mailbox.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn maildir_files_have_lf_endings_return_path_and_delivered_to() {
    let dir = TestDir::new("maildir-format");
    let mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "someone@elsewhere.test",
        &["alice@example.test"],
        "Subject: format\n\nline one\nline two\n",
    );
    assert_eq!(r.code, 250);
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir_raw("alice").len() == 1));
    let raw = mta.maildir_raw("alice").remove(0);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("Return-Path: <someone@elsewhere.test>\n"),
        "{text}"
    );
    assert!(
        text.contains("\nDelivered-To: alice@example.test\n"),
        "{text}"
    );
    assert!(!raw.contains(&b'\r'), "LF line endings: {text:?}");
    assert!(text.ends_with("\n\nline one\nline two\n"), "{text:?}");
    // Python's mailbox module reads the Maildir as a mail reader would.
    let out = python(&format!(
        r#"
import mailbox
box = mailbox.Maildir({path:?}, create=False)
for key, msg in box.items():
    print(msg['Subject'], msg.get_payload().splitlines())
"#,
        path = dir.path("mta-data/mailboxes/alice").display().to_string()
    ));
    assert_eq!(out.trim(), "format ['line one', 'line two']");
    // s-nail, which refuses files whose header block it cannot find, reads it too.
    let maildir = format!(
        "maildir://{}",
        dir.path("mta-data/mailboxes/alice").display()
    );
    let out = std::process::Command::new("s-nail")
        .args([
            "-#", "-N", "-R", "-Y", "type 1", "-Y", "quit", "-f", &maildir,
        ])
        .output()
        .expect("s-nail (Debian package s-nail)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("Subject: format"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shown.contains("\nline one\nline two\n"), "{shown}");
}

#[test]
fn a_partly_failed_mailbox_delivery_retries_only_the_recipient_that_failed() {
    let dir = TestDir::new("partial-delivery");
    let mut mta = Mta::start(
        &dir,
        "[routing]\nretry_base_ms = 100\nretry_max_ms = 200\n",
        &[],
    );
    // bob's Maildir cannot take a message: its tmp/ is a file.
    let bob_tmp = dir.path("mta-data/mailboxes/bob/tmp");
    std::fs::remove_dir_all(&bob_tmp).unwrap();
    std::fs::write(&bob_tmp, b"in the way").unwrap();
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "someone@elsewhere.test",
        &["alice@example.test", "bob@example.test"],
        "Subject: both\n\nhello\n",
    );
    assert_eq!(r.code, 250);
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    // Several retries happen meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(mta.maildir("alice").len(), 1, "no second copy for alice");
    std::fs::remove_file(&bob_tmp).unwrap();
    std::fs::create_dir(&bob_tmp).unwrap();
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mta.maildir("alice").len(), 1);
    assert_eq!(mta.maildir("bob").len(), 1);
    // The retried delivery was recorded as done: a restart delivers nothing again.
    assert!(mta.stop().is_some_and(|s| s.success()));
    mta.spawn(&[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        (mta.maildir("alice").len(), mta.maildir("bob").len()),
        (1, 1),
        "{}",
        mta.log()
    );
    assert_eq!(mta.queued("delivery-mailbox"), 0);
}

#[test]
fn outbox_recipients_transport_refuses_come_back_as_a_report() {
    let dir = TestDir::new("outbox-refused");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry::probe("T", &log).param("reject_rcpt", "bob@example.test")],
        ),
    );
    let mta = Mta::start(
        &dir,
        "[agents]\ntransport = \"agents.config\"\n[directories]\npoll_interval_ms = 100\n",
        &[],
    );
    let outbox = dir.path("mta-data/mailboxes/alice/.Outbox");
    std::fs::write(
        outbox.join("tmp/1.msg"),
        "From: alice@example.test\r\nTo: bob@example.test, postmaster@example.test\r\nSubject: from the outbox\r\n\r\nhello\r\n",
    )
    .unwrap();
    std::fs::rename(outbox.join("tmp/1.msg"), outbox.join("new/1.msg")).unwrap();
    assert!(
        wait_until(WAIT, || mta.maildir("postmaster").len() == 1
            && mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let report = &mta.maildir("alice")[0];
    assert!(
        report.contains("Undeliverable: from the outbox"),
        "{report}"
    );
    assert!(report.contains("bob@example.test"), "{report}");
    assert!(report.contains("probe T rejects"), "{report}");
    assert!(mta.maildir("bob").is_empty());
    // The report is written before the message leaves the outbox: wait for the move.
    let sent = || {
        std::fs::read_dir(dir.path("mta-data/mailboxes/alice/.Sent/cur"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(
        wait_until(WAIT, || sent() == 1),
        "the message moved to Sent"
    );
}

#[test]
fn an_outbox_message_to_more_recipients_than_transport_takes_goes_in_batches() {
    let dir = TestDir::new("outbox-batches");
    let mta = Mta::start_with(
        &dir,
        &[("transport", "max_recipients = 2")],
        "[directories]\npoll_interval_ms = 100\n[organization]\naccepted_domains = [\"example.test\"]\nmailboxes = [\"alice\", \"u1\", \"u2\", \"u3\", \"u4\", \"u5\"]\n",
        &[],
    );
    let outbox = dir.path("mta-data/mailboxes/alice/.Outbox");
    let to: Vec<String> = (1..=5).map(|i| format!("u{i}@example.test")).collect();
    std::fs::write(
        outbox.join("tmp/1.msg"),
        format!(
            "From: alice@example.test\r\nTo: {}\r\nSubject: many\r\n\r\nhello\r\n",
            to.join(", ")
        ),
    )
    .unwrap();
    std::fs::rename(outbox.join("tmp/1.msg"), outbox.join("new/1.msg")).unwrap();
    assert!(
        wait_until(WAIT, || (1..=5)
            .all(|i| mta.maildir(&format!("u{i}")).len() == 1)),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!((1..=5).all(|i| mta.maildir(&format!("u{i}")).len() == 1));
    assert!(
        mta.maildir("alice").is_empty(),
        "no report: {:?}",
        mta.maildir("alice")
    );
}
