//! Running under systemd: the sd_notify(3) protocol as `Type=notify` with `WatchdogSec=` sees
//! it (a Unix datagram socket named by NOTIFY_SOCKET), and the JSON log journald and log
//! shippers read.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The next notification on `socket`, or `None` after `timeout`.
fn next(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits for a notification holding `line`; returns it and every other one seen before it.
fn wait_for(socket: &UnixDatagram, line: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Some(message) = next(socket, Duration::from_millis(500)) {
            if message.lines().any(|l| l == line) {
                return (message, seen);
            }
            seen.push(message);
        }
    }
    panic!("no {line} within {WAIT:?}; seen {seen:?}");
}

/// The greeting of an SMTP port, read at once.
fn greeting(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the SMTP port answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = TestDir::new("sd-notify");
    let socket_path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let (frontend, transport, mailbox) = (free_port(), free_port(), free_port());
    let config = dir.write(
        "mta.toml",
        &format!(
            "data_dir = \"mta-data\"\n[frontend]\nlisten = \"127.0.0.1:{frontend}\"\n[transport]\nlisten = \"127.0.0.1:{transport}\"\n[mailbox]\nlisten = \"127.0.0.1:{mailbox}\"\n"
        ),
    );
    let mut child = Command::new(mta_bin())
        .current_dir(&dir.0)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        // WatchdogSec=0.4: a ping every 0.2 s.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting mta");

    let (ready, before) = wait_for(&socket, "READY=1");
    // READY is the last word of the start: every port answers by then.
    for port in [frontend, transport, mailbox] {
        let line = greeting(port);
        assert!(line.starts_with("220 "), "port {port}: {line:?}");
    }
    assert!(
        !before.iter().any(|m| m.contains("STOPPING=1")),
        "{before:?}"
    );
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_default();
    assert!(
        status.starts_with("Serving: ") && status.contains(&format!(":{frontend}")),
        "{ready:?}"
    );

    // The runtime pings at half the watchdog interval.
    let started = Instant::now();
    for _ in 0..3 {
        wait_for(&socket, "WATCHDOG=1");
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let (stopping, _) = wait_for(&socket, "STOPPING=1");
    assert!(stopping.contains("STATUS=Draining"), "{stopping:?}");
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "mta did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{log}");
}

/// Every line of `log` as JSON; panics on one that is not. A last line without its newline
/// is being written: it is left out.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Sends one message to Transport; returns the queue id its log names.
fn queued_id_in_json_log(mta: &Mta) -> String {
    let mut smtp = Smtp::ehlo(mta.transport);
    let reply = smtp.send_mail(
        "sender@elsewhere.test",
        &["alice@example.test"],
        "Subject: logged\n\nhello\n",
    );
    assert_eq!(reply.code, 250, "{reply:?}");
    smtp.quit();
    assert!(mta.wait_log("Message queued.", 1, WAIT), "{}", mta.log());
    let lines = json_lines(&mta.log());
    let queued = lines
        .iter()
        .find(|v| v["fields"]["message"] == "Message queued.")
        .expect("the Message queued. event");
    assert_eq!(queued["level"], "INFO", "{queued}");
    let id = queued["fields"]["queue_id"]
        .as_str()
        .expect("a queue_id field")
        .to_string();
    assert!(
        reply.text().contains(&id),
        "the reply names the logged id {id}: {reply:?}"
    );
    id
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let dir = TestDir::new("log-json-flag");
    let mta = Mta::start(&dir, "", &["--log-format", "json"]);
    queued_id_in_json_log(&mta);
    // The session's span comes along: one grep (or jq) follows a session.
    let lines = json_lines(&mta.log());
    assert!(
        lines
            .iter()
            .any(|v| v["span"]["name"] == "smtp" && v["span"]["service"] == "transport"),
        "{}",
        mta.log()
    );
}

#[test]
fn log_format_json_in_mta_toml() {
    let dir = TestDir::new("log-json-config");
    let mta = Mta::start(&dir, "[log]\nformat = \"json\"", &[]);
    queued_id_in_json_log(&mta);
}
