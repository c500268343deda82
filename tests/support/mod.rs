//! Shared helpers of the end-to-end tests: build the agent libraries, start the real `mta`
//! binary in a scratch directory, speak SMTP to it, read its Maildirs and logs.

#![allow(dead_code)]

pub mod peer;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `mta` binary under test.
pub fn mta_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mta"))
}

/// Builds the sample and test agent libraries once per test process (cargo makes concurrent
/// builds wait for each other) and returns the directory holding them.
pub fn agents_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        // Built into their own target directory: the outer `cargo test` may hold the lock of
        // the main one while tests run.
        let target = target.join("test-agents");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(workspace())
            .args([
                "build",
                "--quiet",
                "-p",
                "header-stamper",
                "-p",
                "connection-filter",
                "-p",
                "dnsbl",
                "-p",
                "recipient-router",
                "-p",
                "http-delivery",
                "-p",
                "probe",
                "-p",
                "probe-v2",
                "-p",
                "old-sdk-agent",
                "-p",
                "route-probe",
                "-p",
                "text-messaging",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("running cargo build for the agent libraries");
        assert!(status.success(), "building the agent libraries failed");
        target.join("debug")
    })
}

/// The path of a built agent library (`probe` -> `.../libprobe.so`).
pub fn lib(name: &str) -> PathBuf {
    agents_dir().join(format!("lib{}.so", name.replace('-', "_")))
}

/// A scratch directory, removed at the end unless `MTA_KEEP_TEST_DIRS` is set.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mta-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Replaces a file the way a build or an editor does: write aside, then rename.
    pub fn replace(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        let tmp = self.path(&format!("{rel}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("MTA_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One `<agent>` entry.
pub struct Entry<'a> {
    pub name: &'a str,
    pub base_type: &'a str,
    pub factory: &'a str,
    pub assembly: String,
    pub enabled: bool,
    pub params: Vec<(&'a str, String)>,
}

impl<'a> Entry<'a> {
    /// A probe agent named `name` logging to `log`.
    pub fn probe(name: &'a str, log: &Path) -> Self {
        Self {
            name,
            base_type: "SmtpReceiveAgent",
            factory: "Tests.ProbeFactory",
            assembly: lib("probe").display().to_string(),
            enabled: true,
            params: vec![
                ("name", name.to_string()),
                ("log", log.display().to_string()),
            ],
        }
    }

    pub fn param(mut self, name: &'a str, value: &str) -> Self {
        self.params.push((name, value.to_string()));
        self
    }

    pub fn assembly(mut self, path: &Path) -> Self {
        self.assembly = path.display().to_string();
        self
    }

    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// An agents file with these entries.
pub fn agents_xml(time_limit_ms: u64, entries: &[Entry<'_>]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <mexRuntime>\n    <monitoring>\n      <agentExecution timeLimitInMilliseconds=\"{time_limit_ms}\" />\n    </monitoring>\n    <agentList>\n"
    );
    for e in entries {
        out.push_str(&format!(
            "      <agent name=\"{}\" baseType=\"{}\" classFactory=\"{}\" assemblyPath=\"{}\" enabled=\"{}\">\n",
            e.name, e.base_type, e.factory, e.assembly, e.enabled
        ));
        for (n, v) in &e.params {
            out.push_str(&format!(
                "        <parameter name=\"{n}\" value=\"{v}\" />\n"
            ));
        }
        out.push_str("      </agent>\n");
    }
    out.push_str("    </agentList>\n  </mexRuntime>\n</configuration>\n");
    out
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A running `mta` process.
pub struct Mta {
    child: Option<Child>,
    pub dir: PathBuf,
    pub frontend: u16,
    pub transport: u16,
    pub mailbox: u16,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Mta {
    /// Writes `mta.toml` in `dir` (free ports, data under `dir/mta-data`, plus `extra`), and
    /// starts `mta run` with `args`; waits until every listener answers.
    pub fn start(dir: &TestDir, extra: &str, args: &[&str]) -> Mta {
        Self::start_with(dir, &[], extra, args)
    }

    /// Like [`start`](Self::start), with extra keys for the listener tables
    /// (`("transport", "max_message_size = 1000")`).
    pub fn start_with(
        dir: &TestDir,
        listeners: &[(&str, &str)],
        extra: &str,
        args: &[&str],
    ) -> Mta {
        // Free ports can be taken by a concurrent test between the check and the bind: retry.
        for attempt in 0.. {
            let (frontend, transport, mailbox) = (free_port(), free_port(), free_port());
            let keys = |table: &str| {
                let mut keys = listeners
                    .iter()
                    .filter(|(t, _)| *t == table)
                    .map(|(_, k)| format!("{k}\n"))
                    .collect::<String>();
                // Tests talk to Transport from loopback as a trusted server would, unless they
                // say otherwise (by default Transport trusts no address).
                if table == "transport" && !keys.contains("trusted") {
                    keys.push_str("trusted = [\"127.0.0.0/8\"]\n");
                }
                keys
            };
            let config = dir.write(
                "mta.toml",
                &format!(
                    "{}{}{extra}\n[frontend]\nlisten = \"127.0.0.1:{frontend}\"\n{}[transport]\nlisten = \"127.0.0.1:{transport}\"\n{}[mailbox]\nlisten = \"127.0.0.1:{mailbox}\"\n{}",
                    // The tests run as whoever runs them, root included: agents may run as root
                    // unless a test says otherwise.
                    if extra.contains("allow_root_agents") { "" } else { "allow_root_agents = true\n" },
                    if extra.contains("data_dir") { "" } else { "data_dir = \"mta-data\"\n" },
                    keys("frontend"),
                    keys("transport"),
                    keys("mailbox")
                ),
            );
            // It may hold passwords: readable by its owner only, as mta run requires then.
            std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            let mut mta = Mta {
                child: None,
                dir: dir.0.clone(),
                frontend,
                transport,
                mailbox,
                log: dir.path("mta.log"),
                config,
            };
            match mta.try_spawn(args) {
                Ok(()) => return mta,
                Err(log) if attempt < 5 && log.contains("cannot listen on") => continue,
                Err(log) => panic!("mta did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    /// Starts (again) the process with the same configuration.
    pub fn spawn(&mut self, args: &[&str]) {
        if let Err(log) = self.try_spawn(args) {
            panic!("mta did not start:\n{log}");
        }
    }

    fn try_spawn(&mut self, args: &[&str]) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(mta_bin())
            .current_dir(&self.dir)
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .args(args)
            .env("MTA_LOG", "info,mta_host=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mta");
        self.child = Some(child);
        // Wait for every listener's log line (connecting would open sessions agents see).
        let roles = args
            .iter()
            .position(|a| *a == "--roles")
            .and_then(|i| args.get(i + 1))
            .map_or(3, |r| r.split(',').count());
        let starts = self.log().matches(" listening.").count();
        let mut exited = false;
        let up = wait_until(Duration::from_secs(20), || {
            if self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some()
            {
                exited = true;
                return true;
            }
            self.log().matches(" listening.").count() >= starts + roles
        });
        if up && !exited {
            Ok(())
        } else {
            self.kill9();
            Err(self.log())
        }
    }

    /// Everything the process logged so far, without colour codes.
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        strip_ansi(&raw)
    }

    /// Waits until the log contains `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().matches(needle).count() >= count)
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the process with SIGTERM and waits.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe_sigterm(child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Messages in a mailbox's `new/`, oldest first.
    pub fn maildir(&self, mailbox: &str) -> Vec<String> {
        maildir_messages(&self.dir.join("mta-data/mailboxes").join(mailbox))
    }

    /// The agents status of a service.
    pub fn status(&self, service: &str) -> serde_json::Value {
        let p = self.dir.join(format!("mta-data/run/agents-{service}.json"));
        std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The running pipeline generation of a service.
    pub fn generation(&self, service: &str) -> u64 {
        self.status(service)["generation"].as_u64().unwrap_or(0)
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for Mta {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Messages of a Maildir's `new/`, sorted by name (time of delivery).
pub fn maildir_messages(dir: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("new"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned())
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An SMTP reply: code and text lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The enhanced status code of the last line.
    pub fn enhanced(&self) -> String {
        self.lines
            .last()
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("")
            .to_string()
    }
}

/// A plain SMTP client over a real socket, for exact control of what is sent.
pub struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects and reads the greeting.
    pub fn connect(port: u16) -> (Smtp, Reply) {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut smtp = Smtp { stream, reader };
        let greeting = smtp.read_reply();
        (smtp, greeting)
    }

    /// Connects, reads the greeting and says EHLO.
    pub fn ehlo(port: u16) -> Smtp {
        let (mut smtp, greeting) = Smtp::connect(port);
        assert_eq!(greeting.code, 220, "{greeting:?}");
        let r = smtp.cmd("EHLO client.test");
        assert_eq!(r.code, 250, "{r:?}");
        smtp
    }

    /// The client's own port (what the server sees as the remote port).
    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// The socket, for writes that may fail.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends a command line and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// Reads one reply (code 0 when the connection closed).
    pub fn read_reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return Reply { code: 0, lines },
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_string());
            if last {
                return Reply { code, lines };
            }
        }
    }

    /// Whether the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    /// One whole transaction; returns the reply to the end of data (or the first failure).
    pub fn send_mail(&mut self, from: &str, to: &[&str], message: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        if r.code != 250 {
            return r;
        }
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            if r.code != 250 {
                return r;
            }
        }
        let r = self.cmd("DATA");
        if r.code != 354 {
            return r;
        }
        let mut data = message.replace("\r\n", "\n").replace('\n', "\r\n");
        if !data.ends_with("\r\n") {
            data.push_str("\r\n");
        }
        self.send(data.as_bytes());
        self.send(b".\r\n");
        self.read_reply()
    }

    pub fn quit(mut self) {
        let _ = self.cmd("QUIT");
    }
}

/// The lines a probe logged, as `name version event detail`.
pub fn probe_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The events (third word) of the lines of one probe.
pub fn probe_events(path: &Path, name: &str) -> Vec<String> {
    probe_log(path)
        .iter()
        .filter(|l| l.split(' ').next() == Some(name))
        .filter_map(|l| l.split(' ').nth(2).map(str::to_string))
        .collect()
}

/// Runs `mta` with arguments in `dir`; returns (exit code, stdout, stderr).
pub fn run_mta(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(mta_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running mta");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `bytes` with every CRLF turned into LF: how a message looks in a Maildir file.
pub fn lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Raw bytes of the files in a mailbox's `new/`, sorted by name (time of delivery).
pub fn maildir_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("new"))
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
}

/// The body of a stored message: what follows the first empty line (LF or CRLF endings).
pub fn body_of(message: &[u8]) -> &[u8] {
    for (i, w) in message.windows(2).enumerate() {
        if w == b"\n\n" {
            return &message[i + 2..];
        }
        if i + 4 <= message.len() && &message[i..i + 4] == b"\r\n\r\n" {
            return &message[i + 4..];
        }
    }
    &[]
}

/// Runs a Python script; panics with its output when it fails. Returns its standard output.
pub fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Mta {
    /// Raw bytes of the messages in a mailbox's `new/`, oldest first.
    pub fn maildir_raw(&self, mailbox: &str) -> Vec<Vec<u8>> {
        maildir_files(&self.dir.join("mta-data/mailboxes").join(mailbox))
    }

    /// How many files a queue directory (`queue/<name>/`) holds.
    pub fn queued(&self, queue: &str) -> usize {
        std::fs::read_dir(self.dir.join("mta-data/queue").join(queue))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}
