//! Security in depth, from a hostile local user's and a hostile client's side: privileges,
//! file modes, StrictModes, pickup files, forged log lines.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The uids of a running process: real, effective, saved, file system.
fn uids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn started_as_root_it_binds_then_runs_as_the_configured_user_with_its_agents() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TestDir::new("drop");
    chmod(&dir.0, 0o755);
    let log = dir.path("probe.log");
    std::fs::write(&log, b"").unwrap();
    std::os::unix::fs::chown(&log, Some(65534), Some(65534)).unwrap();
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("P", &log)]),
    );
    // No allow_root_agents: the agents run as nobody.
    let mut mta = Mta::start(
        &dir,
        "allow_root_agents = false\nuser = \"nobody\"\n[agents]\ntransport = \"agents.config\"\n",
        &[],
    );
    assert_eq!(uids(mta.pid()), [65534; 4], "{}", mta.log());
    assert!(mta.log().contains("Running as an unprivileged user."));
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: as nobody\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?} {}", mta.log());
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let new = dir.path("mta-data/mailboxes/alice/new");
    let file = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 65534);
    assert!(std::fs::metadata(&log).unwrap().len() > 0, "the agent ran");
    mta.stop();
    // A data dir that belongs to someone else is refused with what to do.
    std::os::unix::fs::chown(dir.path("mta-data"), Some(0), Some(0)).unwrap();
    let (code, _, err) = run_mta(&dir.0, &["--config", mta.config.to_str().unwrap(), "run"]);
    assert_ne!(code, 0);
    assert!(err.contains("chown -R nobody"), "{err}");
}

#[test]
fn agents_are_not_run_as_root_unless_allowed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TestDir::new("root-agents");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("P", &log)]),
    );
    dir.write(
        "mta.toml",
        "[agents]\ntransport = \"agents.config\"\n[frontend]\nlisten = \"127.0.0.1:0\"\n[transport]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n",
    );
    let (code, _, err) = run_mta(
        &dir.0,
        &["--config", dir.path("mta.toml").to_str().unwrap(), "run"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("refusing to run agents as root"), "{err}");
    assert!(!log.exists(), "no agent was loaded");
}

/// The attack: a server started as root with no agents file yet, then a file written later
/// (by `mta agent install`, or by hand). Its libraries must not be opened in the root process.
#[test]
fn an_agents_file_written_after_a_root_start_is_refused_too() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TestDir::new("root-agents-later");
    let log = dir.path("probe.log");
    let mta = Mta::start(
        &dir,
        "allow_root_agents = false\n[agents]\ntransport = \"agents.config\"\n",
        &[],
    );
    assert!(mta.log().contains("No agents file yet"), "{}", mta.log());
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("P", &log)]),
    );
    assert!(
        mta.wait_log("refusing to run agents as root (\"P\" is enabled)", 1, WAIT),
        "{}",
        mta.log()
    );
    assert!(
        !mta.log().contains("Agent pipeline swapped."),
        "{}",
        mta.log()
    );
    // The server keeps serving, without the agent.
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        "a@elsewhere.test",
        &["alice@example.test"],
        "Subject: later\n\nx\n",
    );
    assert_eq!(r.code, 250, "{r:?} {}", mta.log());
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    // `mta agent install` says that the running server refused what it wrote, and fails.
    let config = mta.config.display().to_string();
    let (code, out, err) = run_mta(
        &mta.dir,
        &[
            "--config",
            &config,
            "agent",
            "install",
            "--enable",
            "--name",
            "Q",
            "--factory",
            "Tests.ProbeFactory",
            "--assembly",
            lib("probe").to_str().unwrap(),
            "--parameter",
            &format!("log={}", log.display()),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("Installed agent \"Q\""), "{out}");
    assert!(
        err.starts_with(&format!(
            "error: the running server (pid {}) refused the change; its transport pipeline stays at generation 0, and the file keeps the change (fix or undo it: a start would refuse it too):\n",
        mta.pid()
        )) && err.contains("refusing to run agents as root (\"P\" is enabled)"),
        "{err}"
    );
    assert!(!log.exists(), "no agent was loaded");
}

#[test]
fn mail_queues_and_keys_are_readable_by_the_mta_user_only() {
    let dir = TestDir::new("modes");
    let mta = Mta::start(
        &dir,
        "[routing]\nretry_base_ms = 60000\n[[send_connectors]]\nname = \"Down\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"127.0.0.1:1\"]\ntls = \"none\"\n",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: m\n\nx\n"
        )
        .code,
        250
    );
    assert_eq!(
        smtp.send_mail("alice@example.test", &["x@far.test"], "Subject: q\n\nx\n")
            .code,
        250
    );
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert!(
        wait_until(WAIT, || mta.queued("delivery-send-Down") == 1),
        "{}",
        mta.log()
    );
    let data = dir.path("mta-data");
    assert_eq!(mode(&data), 0o750, "the data dir");
    let alice = data.join("mailboxes/alice");
    assert_eq!(mode(&alice), 0o700, "a Maildir");
    for folder in [
        "new",
        "cur",
        "tmp",
        ".Sent",
        ".Sent/new",
        ".Outbox",
        ".Outbox/new",
    ] {
        assert_eq!(mode(&alice.join(folder)), 0o700, "{folder}");
    }
    for f in std::fs::read_dir(alice.join("new")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600, "a message");
    }
    let queue = data.join("queue/delivery-send-Down");
    assert_eq!(mode(&queue), 0o700);
    for f in std::fs::read_dir(&queue).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600, "a queue file");
    }
    for f in std::fs::read_dir(data.join("queue/journal")).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600, "a journal segment");
    }
    assert_eq!(mode(&data.join("tls/key.pem")), 0o600, "the TLS key");
    for f in std::fs::read_dir(data.join("run")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f) & 0o077, 0, "{}", f.display());
    }
}

/// `mta config check` with an agents file naming `library`.
fn check_library(dir: &TestDir, library: &Path) -> (i32, String) {
    let file = dir.write(
        "agents.config",
        &agents_xml(
            1000,
            &[Entry::probe("P", &dir.path("p.log")).assembly(library)],
        ),
    );
    let (code, out, err) = run_mta(
        &dir.0,
        &["--agents-config", file.to_str().unwrap(), "config", "check"],
    );
    (code, format!("{out}{err}"))
}

#[test]
fn libraries_and_files_another_user_could_write_are_refused_as_sshd_does() {
    let dir = TestDir::new("strict");
    chmod(&dir.0, 0o755);
    let plain = dir.path("ok/libprobe.so");
    std::fs::create_dir_all(plain.parent().unwrap()).unwrap();
    chmod(plain.parent().unwrap(), 0o755);
    std::fs::copy(lib("probe"), &plain).unwrap();
    chmod(&plain, 0o644);
    let (code, out) = check_library(&dir, &plain);
    assert_eq!(code, 0, "{out}");
    // Group-writable library.
    chmod(&plain, 0o664);
    let (code, out) = check_library(&dir, &plain);
    assert!(code != 0 && out.contains("writable by its group"), "{out}");
    chmod(&plain, 0o644);
    // A 0777 grandparent directory.
    let deep = dir.path("open/inner/libprobe.so");
    std::fs::create_dir_all(deep.parent().unwrap()).unwrap();
    chmod(&dir.path("open"), 0o777);
    chmod(deep.parent().unwrap(), 0o755);
    std::fs::copy(lib("probe"), &deep).unwrap();
    chmod(&deep, 0o644);
    let (code, out) = check_library(&dir, &deep);
    assert!(code != 0 && out.contains("above the library"), "{out}");
    // A symlink, in a safe place, into that directory.
    let link = dir.path("ok/link.so");
    std::os::unix::fs::symlink(&deep, &link).unwrap();
    let (code, out) = check_library(&dir, &link);
    assert!(code != 0 && out.contains("mode 777"), "{out}");
    // A group-writable agents file.
    let file = dir.write(
        "agents.config",
        &agents_xml(1000, &[Entry::probe("P", &dir.path("p.log"))]),
    );
    chmod(&file, 0o664);
    let (code, out, err) = run_mta(
        &dir.0,
        &["--agents-config", file.to_str().unwrap(), "config", "check"],
    );
    assert!(
        code != 0 && format!("{out}{err}").contains("writable by its group"),
        "{out}{err}"
    );
    chmod(&file, 0o644);
    if is_root() {
        // A library owned by nobody, even with safe modes: refused, and never run.
        let theirs = dir.path("ok/libtheirs.so");
        std::fs::copy(lib("probe"), &theirs).unwrap();
        chmod(&theirs, 0o644);
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let (code, out) = check_library(&dir, &theirs);
        assert!(code != 0 && out.contains("owned by uid 65534"), "{out}");
        // mta run does not load it either.
        let log = dir.path("theirs.log");
        let agents = dir.write(
            "theirs.config",
            &agents_xml(1000, &[Entry::probe("P", &log).assembly(&theirs)]),
        );
        let toml = dir.write(
            "theirs.toml",
            &format!(
                "allow_root_agents = true\ndata_dir = \"theirs-data\"\n[agents]\ntransport = \"{}\"\n[frontend]\nlisten = \"127.0.0.1:0\"\n[transport]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n",
                agents.display()
            ),
        );
        chmod(&toml, 0o600);
        // (Under `timeout`: a server that started would run until stopped.)
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(mta_bin())
            .current_dir(&dir.0)
            .args(["--config", toml.to_str().unwrap(), "run"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("owned by uid 65534"),
            "{err}"
        );
        assert!(!log.exists(), "the library ran");
        // In sticky /tmp, owned by another user.
        let sticky = dir.path("sticky");
        std::fs::create_dir_all(&sticky).unwrap();
        chmod(&sticky, 0o1777);
        let in_tmp = sticky.join("libprobe.so");
        std::fs::copy(lib("probe"), &in_tmp).unwrap();
        chmod(&in_tmp, 0o644);
        std::os::unix::fs::chown(&in_tmp, Some(65534), Some(65534)).unwrap();
        let (code, out) = check_library(&dir, &in_tmp);
        assert!(code != 0 && out.contains("owned by uid 65534"), "{out}");
    }
    // The host configuration too.
    let toml = dir.write("mta.toml", "hostname = \"x.test\"\n");
    chmod(&toml, 0o666);
    let (code, _, err) = run_mta(&dir.0, &["--config", toml.to_str().unwrap(), "run"]);
    assert!(code != 0 && err.contains("the host configuration"), "{err}");
}

#[test]
fn pickup_takes_only_regular_files_never_a_writers_temporary_file_and_names_what_it_refuses() {
    let dir = TestDir::new("pickup-hostile");
    let secret = dir.write(
        "secret.txt",
        "From: a@example.test\nTo: alice@example.test\nSubject: secret\n\nroot only\n",
    );
    chmod(&secret, 0o600);
    let pickup = dir.path("mta-data/pickup");
    std::fs::create_dir_all(&pickup).unwrap();
    std::os::unix::fs::symlink(&secret, pickup.join("link.eml")).unwrap();
    // A writer's half-written temporary file, and a file with a line break in its name.
    dir.write(
        "mta-data/pickup/half.tmp",
        "From: a@example.test\nTo: alice@example.test\nSubject: half",
    );
    dir.write(
        "mta-data/pickup/evil\nINFO forged line.eml",
        "From: a@example.test\nTo: alice@example.test\nSubject: newline name\n\nx\n",
    );
    dir.write("mta-data/pickup/..eml", "not a message at all");
    // Claimed by this host before a crash: taken again at the start.
    dir.write(
        "mta-data/pickup/claimed.eml.mta-claimed",
        "From: a@example.test\nTo: alice@example.test\nSubject: was claimed\n\nx\n",
    );
    let big = format!(
        "From: a@example.test\nTo: alice@example.test\nSubject: big\n\n{}\n",
        "y".repeat(5000)
    );
    dir.write("mta-data/pickup/big.eml", &big);
    let mta = Mta::start_with(
        &dir,
        &[("transport", "max_message_size = 4000")],
        "[directories]\npoll_interval_ms = 100\n",
        &[],
    );
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("newline name"))),
        "{}",
        mta.log()
    );
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("was claimed"))),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let got = mta.maildir("alice");
    assert!(
        !got.iter().any(|m| m.contains("root only")),
        "a symlink was followed"
    );
    assert!(pickup.join("link.bad").exists(), "the symlink is set aside");
    assert!(
        pickup.join("half.tmp").exists(),
        "a writer's temporary file is left alone"
    );
    assert!(
        pickup.join("..bad").exists(),
        "..eml is refused, not left forever"
    );
    assert!(pickup.join("big.bad").exists(), "the size limit applies");
    let log = mta.log();
    assert!(log.contains("larger than the size limit"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("INFO forged")),
        "a file name wrote its own log line:\n{log}"
    );
}

#[test]
fn a_client_cannot_write_a_log_line() {
    let dir = TestDir::new("forged-log");
    let mta = Mta::start_with(
        &dir,
        &[],
        "[auth]\nrequire_tls = false\n[[auth.users]]\nname = \"dave\"\npassword = \"pw\"\n",
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    // AUTH PLAIN with a user name holding a line break and a fake log line.
    let forged = "\0dave\n2026-01-01T00:00:00Z  INFO FORGED: Authenticated. user=\"root\"\0pw";
    let b64 = base64_encode(forged.as_bytes());
    let r = smtp.cmd(&format!("AUTH PLAIN {b64}"));
    assert_eq!(r.code, 535, "{r:?}");
    smtp.cmd("EHLO line\r\n2026-01-01T00:00:00Z  INFO FORGED: helo");
    smtp.quit();
    std::thread::sleep(Duration::from_millis(300));
    let log = mta.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("INFO FORGED") && l.starts_with("2026-01-01")),
        "{log}"
    );
    assert!(
        log.contains("\\n2026-01-01T00:00:00Z  INFO FORGED"),
        "escaped, not dropped: {log}"
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `mta user ...` with `password` on standard input.
fn mta_user(dir: &TestDir, config: &Path, args: &[&str], password: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(mta_bin())
        .current_dir(&dir.0)
        .arg("--config")
        .arg(config)
        .arg("user")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn auth_plain(port: u16, user: &str, password: &str) -> Reply {
    let mut smtp = Smtp::ehlo(port);
    let r = smtp.cmd(&format!(
        "AUTH PLAIN {}",
        base64_encode(format!("\0{user}\0{password}").as_bytes())
    ));
    smtp.quit();
    r
}

#[test]
fn users_are_stored_as_hashes_and_changed_without_a_restart() {
    let dir = TestDir::new("users");
    let config = dir.write("mta.toml", "[auth]\nrequire_tls = false\n");
    let (code, out) = mta_user(&dir, &config, &["add", "bob@example.test"], "first secret");
    assert_eq!(code, 0, "{out}");
    let users = dir.path("users");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.contains("bob@example.test:{ARGON2ID}$argon2id$"),
        "{text}"
    );
    assert!(!text.contains("first secret"), "no password in clear");
    assert_eq!(mode(&users), 0o600);
    let mta = Mta::start(&dir, "[auth]\nrequire_tls = false\n", &[]);
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "first secret").code,
        235
    );
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "wrong").code,
        535
    );
    let (code, out) = mta_user(
        &dir,
        &mta.config,
        &["passwd", "bob@example.test"],
        "second secret",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "first secret").code,
        535
    );
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "second secret").code,
        235
    );
    let (code, out) = mta_user(&dir, &mta.config, &["remove", "bob@example.test"], "");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "second secret").code,
        535
    );
}

#[test]
fn users_written_as_root_belong_to_the_user_the_server_runs_as() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TestDir::new("users-as-root");
    chmod(&dir.0, 0o755);
    let extra = "user = \"nobody\"\n[auth]\nrequire_tls = false\n";
    let config = dir.write("mta.toml", extra);
    chmod(&config, 0o600);
    let (code, out) = mta_user(&dir, &config, &["add", "bob@example.test"], "first secret");
    assert_eq!(code, 0, "{out}");
    let users = dir.path("users");
    let meta = std::fs::metadata(&users).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "chowned to nobody"
    );
    assert_eq!(mode(&users), 0o600);
    // The server, running as nobody, reads it.
    let mta = Mta::start(&dir, extra, &[]);
    assert_eq!(uids(mta.pid()), [65534; 4], "{}", mta.log());
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "first secret").code,
        235,
        "{}",
        mta.log()
    );
    // And again after a change made as root while it runs.
    let (code, out) = mta_user(
        &dir,
        &mta.config,
        &["passwd", "bob@example.test"],
        "second secret",
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::metadata(&users).unwrap().uid(), 65534);
    assert_eq!(
        auth_plain(mta.transport, "bob@example.test", "second secret").code,
        235,
        "{}",
        mta.log()
    );
    // A user that does not exist is named, and nothing is written.
    let config = dir.write("other.toml", "user = \"no-such-mta-user\"\n");
    let (code, out) = mta_user(&dir, &config, &["add", "carol@example.test"], "pw");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("no-such-mta-user"), "{out}");
}

#[test]
fn user_list_names_the_scheme_of_each_stored_secret() {
    let dir = TestDir::new("users-list");
    let config = dir.write("mta.toml", "[auth]\nrequire_tls = false\n");
    // openssl passwd -6 -salt saltsalt pw
    let crypt = "$6$saltsalt$pauPrmdmG4BTE9h2HPmywiw152IFch6BJCEsaY6D.PLTfpV8sqvXwWdyfsgVgozkYH9B80bAip/08R2BPH2xk/";
    let users = dir.write(
        "users",
        &format!("bare-crypt:{crypt}\ncrypt:{{SHA512-CRYPT}}{crypt}\nplain:{{PLAIN}}pw\nbare:pw\n"),
    );
    chmod(&users, 0o600);
    let (code, out) = mta_user(&dir, &config, &["add", "argon"], "s3cret");
    assert_eq!(code, 0, "{out}");
    let (code, out) = mta_user(&dir, &config, &["list"], "");
    assert_eq!(code, 0, "{out}");
    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(
        listed,
        [
            "bare-crypt  SHA512-CRYPT",
            "crypt  SHA512-CRYPT",
            "plain  PLAIN",
            "bare  PLAIN",
            "argon  ARGON2ID",
        ],
        "{out}"
    );
}

#[test]
fn passwords_readable_by_every_user_stop_the_start() {
    let dir = TestDir::new("readable-passwords");
    let config = dir.write(
        "mta.toml",
        "[auth]\n[[auth.users]]\nname = \"dave\"\npassword = \"{PLAIN}pw\"\n[frontend]\nlisten = \"127.0.0.1:0\"\n[transport]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n",
    );
    chmod(&config, 0o644);
    let (code, _, err) = run_mta(&dir.0, &["--config", config.to_str().unwrap(), "run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("readable by every user of this machine"),
        "{err}"
    );
    let users = dir.write("users", "dave:{PLAIN}pw\n");
    chmod(&users, 0o644);
    let config = dir.write("mta.toml", "[frontend]\nlisten = \"127.0.0.1:0\"\n[transport]\nlisten = \"127.0.0.1:0\"\n[mailbox]\nlisten = \"127.0.0.1:0\"\n");
    chmod(&config, 0o644);
    let (code, _, err) = run_mta(&dir.0, &["--config", config.to_str().unwrap(), "run"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("the users file") && err.contains("chmod o-r"),
        "{err}"
    );
}

#[test]
fn guessing_passwords_is_slowed_then_locked_out_per_address() {
    let dir = TestDir::new("brute");
    let mta = Mta::start(
        &dir,
        "[auth]\nrequire_tls = false\nmax_failures = 3\nlockout_secs = 60\n[[auth.users]]\nname = \"dave\"\npassword = \"{PLAIN}right\"\n",
        &[],
    );
    let started = std::time::Instant::now();
    for guess in ["a", "b", "c"] {
        assert_eq!(auth_plain(mta.transport, "dave", guess).code, 535);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "failures are answered late: {:?}",
        started.elapsed()
    );
    // Locked out now, even with the right password, on a new connection.
    let r = auth_plain(mta.transport, "dave", "right");
    assert_eq!((r.code, r.enhanced()), (454, "4.7.0".to_string()), "{r:?}");
    assert!(
        mta.log().contains("Client locked out of AUTH."),
        "{}",
        mta.log()
    );
}

#[test]
fn a_local_user_cannot_relay_through_transport_or_inject_into_mailboxes() {
    let dir = TestDir::new("local-relay");
    let mta = Mta::start_with(&dir, &[("transport", "trusted = []")], "", &[]);
    // Straight to Transport from loopback, as any local user can: no relay, no XCLIENT.
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.cmd("XCLIENT ADDR=192.0.2.9 TRUSTED=YES");
    assert_eq!((r.code, r.enhanced()), (502, "5.7.0".to_string()), "{r:?}");
    assert_eq!(smtp.cmd("MAIL FROM:<someone@example.test>").code, 250);
    let r = smtp.cmd("RCPT TO:<victim@elsewhere.test>");
    assert_eq!((r.code, r.enhanced()), (550, "5.7.1".to_string()), "{r:?}");
    smtp.quit();
    // Straight to Mailbox Transport's LMTP port: nothing gets into a mailbox.
    let (mut lmtp, greeting) = Smtp::connect(mta.mailbox);
    assert_eq!(greeting.code, 220);
    lmtp.cmd("LHLO local.user");
    let mail = lmtp.cmd("MAIL FROM:<ceo@example.test>");
    let rcpt = lmtp.cmd("RCPT TO:<alice@example.test>");
    assert!(
        mail.code >= 500 || rcpt.code >= 500,
        "a local user delivered into a mailbox: {mail:?} {rcpt:?}"
    );
    // The host's own services reach them over their sockets, which only the MTA's user opens.
    let mut fe = Smtp::ehlo(mta.frontend);
    assert_eq!(
        fe.send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            "Subject: via fe\n\nx\n"
        )
        .code,
        250
    );
    fe.quit();
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    for socket in ["transport.sock", "mailbox.sock"] {
        let path = dir.path("mta-data/run").join(socket);
        assert_eq!(mode(&path), 0o600, "{socket}");
    }
    assert_eq!(mode(&dir.path("mta-data/run")) & 0o077, 0);
}

#[test]
fn config_check_warns_about_unsafe_settings() {
    let dir = TestDir::new("unsafe-settings");
    let data = dir.path("mta-data");
    std::fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o755);
    let config = dir.write(
        "mta.toml",
        "allow_root_agents = true\n[transport]\ntrusted = [\"127.0.0.0/8\"]\n[[auth.users]]\nname = \"dave\"\npassword = \"plain\"\n",
    );
    chmod(&config, 0o600);
    let agents = dir.write("agents.config", &agents_xml(1000, &[]));
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--config",
            config.to_str().unwrap(),
            "--agents-config",
            agents.to_str().unwrap(),
            "config",
            "check",
        ],
    );
    let all = format!("{out}{err}");
    assert_eq!(code, 0, "warnings, not errors: {all}");
    for expected in [
        "can be entered by every user (mode 755)",
        "stored in plain text",
        "agents may run as root",
        "[transport] trusted includes loopback",
    ] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
    // Hashes, a closed data dir, no agents: no warning left.
    chmod(&data, 0o750);
    std::fs::remove_file(&agents).unwrap();
    let hash = {
        let (code, out) = mta_user(&dir, &config, &["hash"], "s3cret");
        assert_eq!(code, 0, "{out}");
        out.trim().to_string()
    };
    std::fs::write(
        &config,
        format!("[[auth.users]]\nname = \"dave\"\npassword = \"{hash}\"\n"),
    )
    .unwrap();
    let (_, out, err) = run_mta(
        &dir.0,
        &["--config", config.to_str().unwrap(), "config", "check"],
    );
    assert!(!format!("{out}{err}").contains("warning"), "{out}{err}");
}

/// XCLIENT's `TLS=YES` (mta's own attribute) tells Transport's agents how the Front End's
/// client connected; it grants nothing on the connection itself. A Front End node that names
/// a TLS client over plaintext is still offered STARTTLS, and AUTH stays closed until this
/// connection is encrypted.
#[test]
fn a_client_named_with_tls_gets_nothing_a_plaintext_connection_would_not() {
    let dir = TestDir::new("xclient-tls-claim");
    let mta = Mta::start_with(
        &dir,
        &[("transport", "frontend_nodes = [\"127.0.0.0/8\"]")],
        "[[auth.users]]\nname = \"dave\"\npassword = \"{PLAIN}pw\"\n",
        &[],
    );
    let (mut smtp, greeting) = Smtp::connect(mta.transport);
    assert_eq!(greeting.code, 220);
    let r = smtp.cmd("XCLIENT ADDR=192.0.2.9 PORT=4000 HELO=client.test TRUSTED=NO TLS=YES");
    assert_eq!(r.code, 220, "{r:?}");
    let ehlo = smtp.cmd("EHLO fe.test");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    let keywords = ehlo.lines.join("\n");
    assert!(keywords.contains("STARTTLS"), "{keywords}");
    assert!(!keywords.contains("AUTH"), "{keywords}");
    let r = smtp.cmd("AUTH PLAIN AGRhdmUAcHc=");
    assert!(r.code >= 500, "AUTH over plaintext: {r:?}");
    smtp.quit();
}
