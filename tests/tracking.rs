//! The message tracking log and `mta track`: the story of a message through the Front End,
//! Transport and a send connector whose smart host is down and then up, of a recipient refused
//! at RCPT, and of one delivered to a Maildir; records name the original client.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// `mta track ARGS` against the test's configuration: (exit code, stdout).
fn track(mta: &Mta, args: &[&str]) -> (i32, String) {
    let config = mta.config.display().to_string();
    let mut all = vec!["--config", config.as_str(), "track"];
    all.extend_from_slice(args);
    let (code, out, err) = run_mta(&mta.dir, &all);
    (code, format!("{out}{err}"))
}

/// The event names of `track`'s story lines, in order.
fn events(story: &str) -> Vec<String> {
    story
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let service = words.nth(1).unwrap_or("").to_string();
            format!("{service} {}", words.next().unwrap_or(""))
        })
        .collect()
}

#[test]
fn track_tells_the_story_through_the_front_end_transport_and_a_send_connector() {
    let dir = TestDir::new("track-story");
    let hop_port = free_port();
    let mta = Mta::start_with(
        &dir,
        &[("frontend", "trusted = [\"127.0.0.0/8\"]")],
        &format!(
            "[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"127.0.0.1:{hop_port}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    assert_eq!(smtp.cmd("MAIL FROM:<sender@client.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<carol@faraway.test>").code, 250);
    let refused = smtp.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!(refused.code, 550, "{refused:?}");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Message-ID: <story-1@client.test>\r\nSubject: tracked\r\n\r\nhello\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();

    // The smart host is down: the story so far ends with a DEFER naming the connection error.
    assert!(
        wait_until(WAIT, || track(
            &mta,
            &["--message-id", "story-1@client.test"]
        )
        .1
        .contains("DEFER")),
        "{}",
        mta.log()
    );
    let peer = Peer::on_port(hop_port, PeerConfig::default());
    assert!(
        wait_until(WAIT, || peer.delivered_to() == ["carol@faraway.test"]),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || track(
        &mta,
        &["--message-id", "<story-1@client.test>"]
    )
    .1
    .contains("SEND")));
    let (code, story) = track(&mta, &["--message-id", "story-1@client.test"]);
    assert_eq!(code, 0, "{story}");
    let seen = events(&story);
    let first = |e: &str| seen.iter().position(|s| s == e);
    let (fe, tr, defer, send) = (
        first("frontend RECEIVE"),
        first("transport RECEIVE"),
        first("transport DEFER"),
        first("transport SEND"),
    );
    assert!(
        fe.is_some() && tr.is_some() && defer.is_some() && send.is_some(),
        "{story}"
    );
    assert!(fe < defer && tr < defer && defer < send, "{story}");
    // The Front End's record names the client; the send names the hop and its reply.
    let fe_line = story
        .lines()
        .find(|l| l.contains("frontend  RECEIVE"))
        .unwrap();
    assert!(fe_line.contains("client=127.0.0.1"), "{fe_line}");
    assert!(fe_line.contains("to=carol@faraway.test"), "{fe_line}");
    let send_line = story.lines().find(|l| l.contains(" SEND ")).unwrap();
    assert!(
        send_line.contains("via=delivery-send-Out")
            && send_line.contains("hop=127.0.0.1")
            && send_line.contains("250 2.0.0 Ok: queued"),
        "{send_line}"
    );
    let defer_line = story.lines().find(|l| l.contains(" DEFER ")).unwrap();
    assert!(defer_line.contains("reply="), "{defer_line}");

    // The refused recipient has a story of its own: a REJECT at RCPT with the reply.
    let (code, rejected) = track(&mta, &["--recipient", "nobody@example.test"]);
    assert_eq!(code, 0, "{rejected}");
    assert!(
        rejected.contains("REJECT")
            && rejected.contains("550")
            && rejected.contains("detail=RCPT")
            && rejected.contains("client=127.0.0.1"),
        "{rejected}"
    );
    // Filters: by event, and nothing for a sender never seen.
    let (_, sends) = track(&mta, &["--sender", "sender@client.test", "--event", "send"]);
    assert_eq!(events(&sends), ["transport SEND"], "{sends}");
    let (code, none) = track(&mta, &["--sender", "nobody@nowhere.test"]);
    assert_eq!(code, 1, "{none}");
    // JSON lines for log shippers, with Exchange's field names.
    let (_, json) = track(&mta, &["--message-id", "story-1@client.test", "--json"]);
    let records: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(records.iter().any(|r| r["event"] == "SEND"
        && r["message_id"] == "<story-1@client.test>"
        && r["sender"] == "sender@client.test"
        && r["recipients"][0] == "carol@faraway.test"
        && r["size"].as_u64().is_some()));
}

#[test]
fn a_maildir_delivery_is_tracked_across_the_three_services() {
    let dir = TestDir::new("track-maildir");
    let mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "someone@elsewhere.test",
        &["alice@example.test"],
        "Message-ID: <local-1@elsewhere.test>\nSubject: hi\n\nhello\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    assert!(wait_until(WAIT, || track(
        &mta,
        &["--recipient", "alice@example.test"]
    )
    .1
    .contains("DELIVER")));
    let (_, story) = track(&mta, &["--recipient", "alice@example.test"]);
    let seen = events(&story);
    for e in [
        "frontend RECEIVE",
        "transport RECEIVE",
        "transport SEND",
        "mailbox RECEIVE",
        "mailbox DELIVER",
    ] {
        assert!(seen.contains(&e.to_string()), "{e} missing:\n{story}");
    }
    let deliver = story.lines().find(|l| l.contains("DELIVER")).unwrap();
    assert!(deliver.contains("mailboxes/alice"), "{deliver}");
    // Every record of the story carries Transport's queue id, the Mailbox's included.
    let ids: std::collections::BTreeSet<&str> = story
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("id=")))
        .collect();
    assert_eq!(ids.len(), 1, "{story}");
    // The log is the MTA user's only.
    let file = std::fs::read_dir(dir.path("mta-data/tracking"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}
