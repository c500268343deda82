//! mta.toml reloads live: a change to the file (or SIGHUP, or `mta config reload`) swaps in
//! new mailboxes, connectors and limits for new sessions while sessions in flight keep what
//! they started with; a broken file changes nothing and says where it is broken; a key that
//! needs a restart is named; the Unreachable queue is routed again when connectors change.

mod support;

use std::time::Duration;
use support::peer::Peer;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn mta_cmd(mta: &Mta, args: &[&str]) -> (i32, String, String) {
    let config = mta.config.display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    run_mta(&mta.dir, &all)
}

/// Appends `text` to the configuration file, as an operator's editor would change it.
fn append(mta: &Mta, text: &str) {
    let mut config = std::fs::read_to_string(&mta.config).unwrap();
    config.push_str(text);
    std::fs::write(&mta.config, config).unwrap();
}

fn rcpt(session: &mut Smtp, address: &str) -> u16 {
    assert_eq!(session.cmd("RSET").code, 250);
    assert_eq!(session.cmd("MAIL FROM:<someone@elsewhere.test>").code, 250);
    session.cmd(&format!("RCPT TO:<{address}>")).code
}

#[test]
fn a_changed_mta_toml_serves_new_sessions_and_a_broken_one_changes_nothing() {
    let dir = TestDir::new("config-reload");
    let mta = Mta::start(
        &dir,
        "[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n",
        &[],
    );
    let mut before = Smtp::ehlo(mta.frontend);
    assert_eq!(rcpt(&mut before, "sales@example.test"), 550);

    // A new mailbox: new sessions take it; the session opened before keeps its configuration.
    append(
        &mta,
        "\n[organization]\nmailboxes = [\"alice\", \"bob\", \"postmaster\", \"sales\"]\n",
    );
    assert!(
        mta.wait_log("Host configuration reloaded.", 1, WAIT),
        "{}",
        mta.log()
    );
    let mut after = Smtp::ehlo(mta.frontend);
    assert_eq!(rcpt(&mut after, "sales@example.test"), 250);
    assert_eq!(
        rcpt(&mut before, "sales@example.test"),
        550,
        "a session keeps the configuration it started with"
    );
    before.quit();
    assert_eq!(after.cmd("RSET").code, 250);
    let r = after.send_mail(
        "someone@elsewhere.test",
        &["sales@example.test"],
        "Subject: to the new mailbox\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    after.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("sales").len() == 1),
        "{}",
        mta.log()
    );

    // A broken file: the error names the place, the running configuration stays, mail flows.
    append(&mta, "\n[transport]\nmax_recipients = \"many\n");
    assert!(
        mta.wait_log("Host configuration reload failed", 1, WAIT),
        "{}",
        mta.log()
    );
    let (_, status, _) = mta_cmd(&mta, &["status"]);
    assert!(
        status.contains("last reload FAILED") && status.contains("mta.toml:"),
        "{status}"
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "someone@elsewhere.test",
        &["sales@example.test"],
        "Subject: while broken\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("sales").len() == 2));

    // Fixed, with a listener address changed: that waits for a restart, and says so; the
    // running listener keeps serving.
    let fixed = std::fs::read_to_string(&mta.config)
        .unwrap()
        .replace("\n[transport]\nmax_recipients = \"many\n", "\n")
        .replace(
            &format!("127.0.0.1:{}", mta.frontend),
            &format!("127.0.0.1:{}", free_port()),
        );
    std::fs::write(&mta.config, fixed).unwrap();
    assert!(
        mta.wait_log("Host configuration reloaded.", 2, WAIT),
        "{}",
        mta.log()
    );
    let (_, status, _) = mta_cmd(&mta, &["status"]);
    assert!(
        status.contains("needs a restart for: [frontend] listen"),
        "{status}"
    );
    assert!(!status.contains("FAILED"), "{status}");
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(rcpt(&mut smtp, "alice@example.test"), 250);
    smtp.quit();

    // The same text saved again changes nothing; SIGHUP and `mta config reload` reload all
    // the same (a renewed certificate or a new users file is named by an unchanged file).
    let unchanged = mta.log().matches("Host configuration: no change.").count();
    std::fs::write(&mta.config, std::fs::read(&mta.config).unwrap()).unwrap();
    assert!(
        mta.wait_log("Host configuration: no change.", unchanged + 1, WAIT),
        "{}",
        mta.log()
    );
    let (code, out, err) = mta_cmd(&mta, &["config", "reload"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("reloaded"), "{out}");
    assert!(mta.wait_log("Host configuration reloaded.", 3, WAIT));
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &mta.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(
        mta.wait_log("Host configuration reloaded.", 4, WAIT),
        "{}",
        mta.log()
    );
}

#[test]
fn a_new_connector_takes_the_unreachable_queue_without_a_restart() {
    let peer = Peer::start();
    let dir = TestDir::new("config-reload-connector");
    let mta = Mta::start(
        &dir,
        "[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "alice@example.test",
        &["carol@far.test"],
        "Subject: no route yet\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.queued("unreachable") == 1),
        "{}",
        mta.log()
    );
    append(
        &mta,
        &format!(
            "\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
            peer.address()
        ),
    );
    assert!(
        wait_until(WAIT, || peer.delivered_to() == ["carol@far.test"]),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || mta.queued("unreachable") == 0));
    assert!(mta.log().contains("Routing the Unreachable queue again."));
}

#[test]
fn a_users_file_created_after_the_start_is_offered_after_mta_config_reload() {
    let dir = TestDir::new("config-reload-auth");
    let mta = Mta::start(&dir, "[auth]\nrequire_tls = false\n", &[]);
    let mut smtp = Smtp::connect(mta.frontend).0;
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(!ehlo.text().contains("AUTH"), "{ehlo:?}");
    smtp.quit();
    // The first user: the file appears, the unchanged mta.toml is reloaded on request.
    use std::io::Write;
    let mut child = std::process::Command::new(mta_bin())
        .current_dir(&mta.dir)
        .arg("--config")
        .arg(&mta.config)
        .args(["user", "add", "ann"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let (code, _, err) = mta_cmd(&mta, &["config", "reload"]);
    assert_eq!(code, 0, "{err}");
    let mut smtp = Smtp::connect(mta.frontend).0;
    let ehlo = smtp.cmd("EHLO client.test");
    assert!(ehlo.text().contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    smtp.quit();
}

/// A certificate made with openssl for `cn`, written to `cert.pem` and `key.pem` in `dir`.
fn certificate(dir: &TestDir, cn: &str) {
    let status = std::process::Command::new("openssl")
        .current_dir(&dir.0)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-keyout", "key.pem.new", "-out", "cert.pem.new", "-subj"])
        .arg(format!("/CN={cn}"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    // Replaced whole, as an operator's renewal tool does.
    std::fs::rename(dir.path("key.pem.new"), dir.path("key.pem")).unwrap();
    std::fs::rename(dir.path("cert.pem.new"), dir.path("cert.pem")).unwrap();
}

/// The subject of the certificate a new STARTTLS session on `port` is shown.
fn presented(port: u16) -> String {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("subject="))
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_renewed_certificate_is_presented_after_mta_config_reload() {
    let dir = TestDir::new("config-reload-tls");
    certificate(&dir, "one.test");
    let mta = Mta::start(
        &dir,
        "[tls]\ncertificate = \"cert.pem\"\nkey = \"key.pem\"\n",
        &[],
    );
    assert!(
        presented(mta.frontend).contains("one.test"),
        "{}",
        mta.log()
    );
    certificate(&dir, "two.test");
    let (code, _, err) = mta_cmd(&mta, &["config", "reload"]);
    assert_eq!(code, 0, "{err}");
    let now = presented(mta.frontend);
    assert!(now.contains("two.test"), "{now}");
}

/// A mailbox added by a reload sends from its outbox at once, as one present at start does.
#[test]
fn the_outbox_of_a_mailbox_added_by_a_reload_is_sent_without_a_restart() {
    let dir = TestDir::new("config-reload-outbox");
    let mta = Mta::start(&dir, "[directories]\npoll_interval_ms = 100\n", &[]);
    append(
        &mta,
        "\n[organization]\nmailboxes = [\"alice\", \"bob\", \"postmaster\", \"sales\"]\n",
    );
    assert!(
        mta.wait_log("Host configuration reloaded.", 1, WAIT),
        "{}",
        mta.log()
    );
    let outbox = dir.path("mta-data/mailboxes/sales/.Outbox");
    assert!(outbox.join("new").is_dir(), "the reload made the mailbox");
    std::fs::write(
        outbox.join("tmp/1.msg"),
        "From: sales@example.test\r\nTo: alice@example.test\r\nSubject: from the new outbox\r\n\r\nhello\r\n",
    )
    .unwrap();
    std::fs::rename(outbox.join("tmp/1.msg"), outbox.join("new/1.msg")).unwrap();
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Subject: from the new outbox")
                && m.contains("From: sales@example.test"))),
        "{}",
        mta.log()
    );
}

/// A mailbox taken out by a reload keeps its Maildir; mail waiting in its outbox is no longer
/// sent, and the log says so.
#[test]
fn a_reload_that_removes_a_mailbox_says_what_waits_in_its_outbox() {
    let dir = TestDir::new("config-reload-removed");
    // The outbox is polled once at start, then not for ten minutes: the message stays.
    let mta = Mta::start(
        &dir,
        "[directories]\npoll_interval_ms = 600000\n[organization]\nmailboxes = [\"alice\", \"bob\", \"postmaster\", \"sales\"]\n",
        &[],
    );
    let outbox = dir.path("mta-data/mailboxes/sales/.Outbox");
    std::fs::write(
        outbox.join("tmp/1.msg"),
        "From: sales@example.test\r\nTo: alice@example.test\r\nSubject: waiting\r\n\r\nhello\r\n",
    )
    .unwrap();
    std::fs::rename(outbox.join("tmp/1.msg"), outbox.join("new/1.msg")).unwrap();
    let config = std::fs::read_to_string(&mta.config).unwrap();
    std::fs::write(
        &mta.config,
        config.replace("\"postmaster\", \"sales\"]", "\"postmaster\"]"),
    )
    .unwrap();
    assert!(
        mta.wait_log("Host configuration reloaded.", 1, WAIT),
        "{}",
        mta.log()
    );
    let log = mta.log();
    let line = log
        .lines()
        .find(|l| l.contains("Mailbox removed from the configuration"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("mailbox=sales") && line.contains("waiting=1"),
        "{line}"
    );
    assert!(outbox.join("new/1.msg").exists());
}
