//! Running under systemd: the JSON log journald and log shippers read.

mod support;

use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Every line of `log` as JSON; panics on one that is not.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
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
