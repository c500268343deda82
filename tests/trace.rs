//! Pipeline tracing (`<messageSnapshot enabled="true"/>`) and `mta trace`: a message through the
//! Front End and Transport, changed by agents of both, leaves one private file per agent call
//! under its Transport queue id, and `mta trace` tells which agent changed what. Off, nothing
//! is written; a reload turns it on.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// An agents file with `entries`, tracing on or off.
fn agents_file(entries: &[Entry<'_>], snapshots: bool) -> String {
    let xml = agents_xml(5000, entries);
    if snapshots {
        xml.replace(
            "</monitoring>",
            "  <messageSnapshot enabled=\"true\" />\n    </monitoring>",
        )
    } else {
        xml
    }
}

/// The Transport agents: a stamper of the message, a routing agent that adds a recipient and
/// one that overrides a recipient's routing.
fn transport_agents(snapshots: bool) -> String {
    let entries = [
        Entry {
            name: "Header stamper",
            base_type: "SmtpReceiveAgent",
            factory: "Mta.Samples.HeaderStamperFactory",
            assembly: lib("header-stamper").display().to_string(),
            enabled: true,
            params: vec![("header", "X-Traced".into()), ("value", "yes".into())],
        },
        Entry {
            name: "Route probe",
            base_type: "RoutingAgent",
            factory: "Tests.RouteProbeFactory",
            assembly: lib("route-probe").display().to_string(),
            enabled: true,
            params: vec![
                ("expand_subject", "trace me".into()),
                ("add_recipient", "bob@example.test".into()),
            ],
        },
        Entry {
            name: "Recipient router",
            base_type: "RoutingAgent",
            factory: "Mta.Samples.RecipientRouterFactory",
            assembly: lib("recipient-router").display().to_string(),
            enabled: true,
            params: vec![
                ("pattern", "bob@*".into()),
                ("routing_domain", "example.test".into()),
            ],
        },
    ];
    agents_file(&entries, snapshots)
}

/// The Front End's agent: the probe, stamping at OnEndOfHeaders.
fn frontend_agents(dir: &TestDir) -> String {
    let log = dir.path("probe.log");
    agents_file(
        &[Entry::probe("FE-stamp", &log).param("stamp", "true")],
        true,
    )
}

/// Sends the test message through the Front End; Transport's queue id from the reply.
fn send(mta: &Mta, subject: &str) -> String {
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.send_mail(
        "sender@client.test",
        &["alice@example.test"],
        &format!("Message-ID: <{subject}@client.test>\nSubject: {subject}\n\nhello\n"),
    );
    assert_eq!(r.code, 250, "{r:?}\n{}", mta.log());
    smtp.quit();
    let text = r.text();
    let start = text.find('<').expect("the reply names the queue id") + 1;
    let end = text[start..].find('>').unwrap() + start;
    text[start..end].to_string()
}

/// The snapshot file names of `id`, in number order.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| n.split('-').next().unwrap().parse::<u32>().unwrap());
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// `mta trace ARGS`: (exit code, stdout, stderr).
fn trace(mta: &Mta, args: &[&str]) -> (i32, String, String) {
    let config = mta.config.display().to_string();
    let mut all = vec!["--config", config.as_str(), "trace"];
    all.extend_from_slice(args);
    run_mta(&mta.dir, &all)
}

/// The block of `mta trace`'s report about the snapshot whose header line contains `needle`.
fn block<'a>(report: &'a str, needle: &str) -> &'a str {
    let start = report
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{report}"));
    let rest = &report[start..];
    let end = rest[1..].find("\n\n").map_or(rest.len(), |e| e + 2);
    &rest[..end]
}

#[test]
fn each_agent_call_is_recorded_and_trace_tells_what_it_changed() {
    let dir = TestDir::new("trace-on");
    dir.write("agents.config", &transport_agents(true));
    dir.write("fetagents.config", &frontend_agents(&dir));
    let mta = Mta::start(&dir, "", &[]);
    let id = send(&mta, "trace me");
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1
            && mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let root = dir.path("mta-data/snapshots");
    let item = root.join(&id);
    // The routing events are the last: wait for the last agent's last one.
    assert!(
        wait_until(WAIT, || files(&item).iter().any(
            |f| f.ends_with("-transport-OnCategorizedMessage-Route_probe.eml")
        )),
        "{:?}\n{}",
        files(&item),
        mta.log()
    );
    let names = files(&item);

    // Numbered from 000 without gaps, the original first.
    for (n, name) in names.iter().enumerate() {
        assert!(name.starts_with(&format!("{n:03}-")), "{names:?}");
    }
    assert_eq!(
        names[0], "000-frontend-OnRcptCommand-original.eml",
        "{names:?}"
    );
    let at = |needle: &str| {
        names
            .iter()
            .position(|n| n.ends_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in {names:?}"))
    };
    let fe_stamp = at("-frontend-OnEndOfHeaders-FE-stamp.eml");
    let before_stamp = at("-transport-OnEndOfData-host.eml");
    let stamp = at("-transport-OnEndOfData-Header_stamper.eml");
    let expand = at("-transport-OnSubmittedMessage-Route_probe.eml");
    let routed = at("-transport-OnResolvedMessage-Recipient_router.eml");
    assert!(
        fe_stamp < before_stamp && before_stamp + 1 == stamp && stamp < expand && expand < routed,
        "{names:?}"
    );

    // Private: the directories are the MTA user's only, and so are the files.
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&item), 0o700);
    for name in &names {
        assert_eq!(mode(&item.join(name)), 0o600, "{name}");
    }

    // The original is the envelope as the Front End's first agent found it; the stamp is in
    // the stamper's snapshot, not in the one before it.
    let read = |i: usize| {
        String::from_utf8_lossy(&std::fs::read(item.join(&names[i])).unwrap()).into_owned()
    };
    let original = read(0);
    assert!(
        original.contains("X-Snapshot-Kind: original\r\n"),
        "{original}"
    );
    assert!(
        original.contains("X-Sender: <sender@client.test>\r\n"),
        "{original}"
    );
    assert!(
        original.contains("X-EndOfInjectedXHeaders: envelope\r\n"),
        "{original}"
    );
    assert!(!original.contains("X-Traced"), "{original}");
    let unstamped = read(before_stamp);
    assert!(
        unstamped.contains("Subject: trace me\r\n") && !unstamped.contains("X-Traced"),
        "{unstamped}"
    );
    let stamped = read(stamp);
    assert!(
        stamped.contains("X-Snapshot-Agent: Header stamper\r\n"),
        "{stamped}"
    );
    assert!(stamped.contains("\r\nX-Traced: yes\r\n"), "{stamped}");
    assert!(
        stamped.contains("X-EndOfInjectedXHeaders: message\r\n"),
        "{stamped}"
    );
    let expanded = read(expand);
    assert!(
        expanded.contains("X-Receiver: <bob@example.test>\r\n"),
        "{expanded}"
    );
    assert!(read(routed).contains("X-Receiver: <bob@example.test> ROUTING=example.test\r\n"));

    // mta trace: the added header in a diff under the stamper, the recipient changes under
    // the routing agents, "no change" for an agent that changed nothing.
    let (code, report, err) = trace(&mta, &[&id]);
    assert_eq!(code, 0, "{report}{err}");
    assert!(
        report.starts_with(&format!("Queue id {id}: {} snapshots\n", names.len())),
        "{report}"
    );
    let stamper = block(&report, "transport  OnEndOfData  agent \"Header stamper\"");
    assert!(
        stamper.contains(&format!("--- {}", names[before_stamp])),
        "{stamper}"
    );
    assert!(
        stamper.contains(&format!("+++ {}", names[stamp])),
        "{stamper}"
    );
    assert!(stamper.contains("\n     +X-Traced: yes\n"), "{stamper}");
    let fe = block(&report, "frontend  OnEndOfHeaders  agent \"FE-stamp\"");
    assert!(fe.contains("+X-Probe-FE-stamp: "), "{fe}");
    let probe = block(
        &report,
        "transport  OnSubmittedMessage  agent \"Route probe\"",
    );
    assert!(
        probe.contains("recipient added: <bob@example.test>\n"),
        "{probe}"
    );
    let router = block(
        &report,
        "transport  OnResolvedMessage  agent \"Recipient router\"",
    );
    assert!(
        router.contains(
            "recipient changed: <bob@example.test> -> <bob@example.test> ROUTING=example.test\n"
        ),
        "{router}"
    );
    assert!(router.contains("action: SetRoutingOverride"), "{router}");
    let quiet = block(&report, "transport  OnRoutedMessage  agent \"Route probe\"");
    assert!(quiet.contains("no change"), "{quiet}");

    // JSON lines, one per snapshot, with the changes.
    let (code, json, _) = trace(&mta, &[&id, "--json"]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), names.len());
    assert_eq!(lines[stamp]["agent"], "Header stamper");
    assert!(lines[stamp]["changes"]["diff"]
        .as_str()
        .unwrap()
        .contains("+X-Traced: yes"));
    assert_eq!(
        lines[expand]["changes"]["recipients_added"][0],
        "<bob@example.test>"
    );

    // An id without snapshots says so.
    let (code, _, err) = trace(&mta, &["NOSUCHID"]);
    assert_eq!(code, 1);
    assert!(err.contains("No snapshots of NOSUCHID"), "{err}");
}

#[test]
fn nothing_is_written_when_off_or_for_other_senders_and_a_reload_turns_it_on() {
    let dir = TestDir::new("trace-off");
    dir.write("agents.config", &transport_agents(false));
    let mut mta = Mta::start(&dir, "", &[]);
    let root = dir.path("mta-data/snapshots");
    send(&mta, "off");
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    assert!(!root.exists(), "{:?}", files(&root));

    // A reload turns it on for the messages that come after.
    let generation = mta.generation("transport");
    dir.replace("agents.config", transport_agents(true).as_bytes());
    assert!(
        wait_until(WAIT, || mta.generation("transport") > generation),
        "{}",
        mta.log()
    );
    let id = send(&mta, "reloaded");
    assert!(
        wait_until(WAIT, || files(&root.join(&id))
            .iter()
            .any(|f| f.ends_with("-transport-OnEndOfData-Header_stamper.eml"))),
        "{}",
        mta.log()
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
    mta.stop();

    // On, for another sender only: nothing for this one.
    let mta = Mta::start(
        &dir,
        "[snapshots]\nsenders = [\"Someone-Else@client.test\"]\n",
        &[],
    );
    let id = send(&mta, "filtered");
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 3),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!root.join(&id).exists(), "{:?}", files(&root.join(&id)));
}
