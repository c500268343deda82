//! The categorizer, routing and connectors with the real binary: routing agents' actions,
//! routing overrides to a Delivery Agent connector served by a real delivery agent talking to a
//! real HTTP system, a Send connector to a real SMTP server (another mta), a Foreign
//! connector's drop directory, the text messaging pair, loops and non-delivery reports.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const FAST_RETRY: &str = "[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n";

fn route_probe<'a>(log: &std::path::Path) -> Entry<'a> {
    Entry {
        name: "Route Probe",
        base_type: "RoutingAgent",
        factory: "Tests.RouteProbeFactory",
        assembly: lib("route-probe").display().to_string(),
        enabled: true,
        params: vec![("log", log.display().to_string())],
    }
}

fn send(mta: &Mta, from: &str, to: &[&str], subject: &str) {
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        from,
        to,
        &format!("Subject: {subject}\n\nbody of {subject}\n"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
}

fn events(log: &std::path::Path, subject: &str) -> Vec<String> {
    probe_log(log)
        .iter()
        .filter(|l| l.contains(&format!("subject={subject} ")))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn routing_agent_actions_take_effect() {
    let dir = TestDir::new("routing-actions");
    let log = dir.path("route.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[route_probe(&log)
                .param("delete_subject", "delete me")
                .param("defer_subject", "defer me")
                .param("defer_ms", "300")
                .param("fork_subject", "fork me")
                .param("expand_subject", "expand me")
                .param("add_recipient", "bob@example.test")
                .param("panic_subject", "poison me")
                .param("stamp", "true")],
        ),
    );
    let mta = Mta::start(
        &dir,
        &format!("[agents]\ntransport = \"agents.config\"\n{FAST_RETRY}"),
        &[],
    );

    send(&mta, "a@elsewhere.test", &["alice@example.test"], "plain");
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    let message = &mta.maildir("alice")[0];
    assert!(
        message.contains("X-Route-Probe: OnSubmittedMessage,OnResolvedMessage,OnRoutedMessage,OnCategorizedMessage"),
        "{message}"
    );

    send(
        &mta,
        "a@elsewhere.test",
        &["alice@example.test"],
        "delete me",
    );
    assert!(
        mta.wait_log("Message deleted by a routing agent.", 1, WAIT),
        "{}",
        mta.log()
    );
    assert_eq!(events(&log, "delete me"), ["OnSubmittedMessage"]);

    send(
        &mta,
        "a@elsewhere.test",
        &["alice@example.test"],
        "defer me",
    );
    assert!(wait_until(WAIT, || mta
        .maildir("alice")
        .iter()
        .any(|m| m.contains("Subject: defer me"))));
    assert!(mta.log().contains("Mail item deferred."));
    assert_eq!(
        events(&log, "defer me")
            .iter()
            .filter(|e| *e == "OnSubmittedMessage")
            .count(),
        2,
        "categorized again after the delay"
    );

    send(
        &mta,
        "a@elsewhere.test",
        &["alice@example.test", "bob@example.test"],
        "fork me",
    );
    assert!(wait_until(WAIT, || mta
        .maildir("bob")
        .iter()
        .any(|m| m.contains("Subject: fork me"))));
    assert!(wait_until(WAIT, || mta
        .maildir("alice")
        .iter()
        .any(|m| m.contains("Subject: fork me"))));
    assert!(mta.log().contains("Mail item forked."));
    assert!(
        probe_log(&log)
            .iter()
            .any(|l| l.starts_with("OnCategorizedMessage subject=fork me rcpts=bob@example.test")),
        "the fork is categorized on its own"
    );

    send(
        &mta,
        "a@elsewhere.test",
        &["alice@example.test"],
        "expand me",
    );
    assert!(
        wait_until(WAIT, || mta
            .maildir("bob")
            .iter()
            .any(|m| m.contains("Subject: expand me"))),
        "expanded recipient"
    );

    send(
        &mta,
        "a@elsewhere.test",
        &["alice@example.test"],
        "poison me",
    );
    let poison = dir.path("mta-data/queue/poison");
    assert!(
        wait_until(WAIT, || std::fs::read_dir(&poison)
            .map(|d| d.count())
            .unwrap_or(0)
            == 1),
        "{}",
        mta.log()
    );
    assert!(mta.log().contains("moved to the Poison queue"));
    assert!(!mta
        .maildir("alice")
        .iter()
        .any(|m| m.contains("Subject: poison me")));
}

/// A tiny HTTP system: answers each recipient (X-Mta-Recipient) with its next scripted status.
fn http_system(script: HashMap<String, Vec<u16>>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(script));
    let seen = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut recipient = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("X-Mta-Recipient: ") {
                    recipient = v.to_string();
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length: ") {
                    length = v.parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let status = {
                let mut s = script.lock().unwrap();
                let queue = s.entry(recipient.clone()).or_default();
                if queue.len() > 1 {
                    queue.remove(0)
                } else {
                    queue.first().copied().unwrap_or(200)
                }
            };
            if status == 200 {
                seen.lock().unwrap().push(format!(
                    "{recipient} {}",
                    String::from_utf8_lossy(&body)
                        .lines()
                        .find(|l| l.starts_with("Subject:"))
                        .unwrap_or("")
                ));
            }
            let _ = stream.write_all(
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, received)
}

#[test]
fn a_routing_override_sends_recipients_through_a_delivery_agent_connector() {
    let script = HashMap::from([
        ("ok@web.test".to_string(), vec![200]),
        ("later@web.test".to_string(), vec![503, 503, 200]),
        ("bad@web.test".to_string(), vec![404]),
    ]);
    let (port, received) = http_system(script);
    let dir = TestDir::new("delivery-agent");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[
                Entry {
                    name: "Web Router",
                    base_type: "RoutingAgent",
                    factory: "Mta.Samples.RecipientRouterFactory",
                    assembly: lib("recipient-router").display().to_string(),
                    enabled: true,
                    params: vec![
                        ("pattern", "*@web.test".into()),
                        ("routing_domain", "HTTP".into()),
                    ],
                },
                Entry {
                    name: "Web Delivery",
                    base_type: "DeliveryAgent",
                    factory: "Mta.Samples.HttpDeliveryFactory",
                    assembly: lib("http-delivery").display().to_string(),
                    enabled: true,
                    params: vec![("url", format!("http://127.0.0.1:{port}/inbox"))],
                },
            ],
        ),
    );
    let mta = Mta::start(
        &dir,
        &format!(
            "[agents]\ntransport = \"agents.config\"\n{FAST_RETRY}\n[[delivery_agent_connectors]]\nname = \"Web\"\naddress_spaces = [\"HTTP:*;1\"]\ndelivery_protocol = \"HTTP\"\n"
        ),
        &[],
    );
    send(
        &mta,
        "alice@example.test",
        &["ok@web.test", "later@web.test", "bad@web.test"],
        "to the web",
    );
    assert!(
        wait_until(WAIT, || received.lock().unwrap().len() == 2),
        "{:?}\n{}",
        received.lock().unwrap(),
        mta.log()
    );
    let got = received.lock().unwrap().clone();
    assert!(
        got.contains(&"ok@web.test Subject: to the web".to_string()),
        "{got:?}"
    );
    assert!(
        got.contains(&"later@web.test Subject: to the web".to_string()),
        "deferred, then delivered on retry: {got:?}"
    );
    assert!(mta.log().contains("Delivered by agent.") && mta.log().contains("latency_ms="));
    // bad@web.test failed: a non-delivery report reached the sender's mailbox.
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Undeliverable: to the web"))),
        "{}",
        mta.log()
    );
    let ndr = mta
        .maildir("alice")
        .into_iter()
        .find(|m| m.contains("Undeliverable"))
        .unwrap();
    assert!(
        ndr.contains("Final-Recipient: rfc822; bad@web.test") && ndr.contains("Action: failed"),
        "{ndr}"
    );
    assert!(!ndr.contains("Final-Recipient: rfc822; ok@web.test"));
}

#[test]
fn a_send_connector_relays_to_its_smart_host_and_retries_while_it_is_down() {
    // The smart host: another mta whose organisation is far.test.
    let remote_dir = TestDir::new("smart-host");
    let remote_port = free_port();
    let dir = TestDir::new("send-connector");
    let mta = Mta::start(
        &dir,
        &format!(
            "{FAST_RETRY}\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"127.0.0.1:{remote_port}\"]\n"
        ),
        &[],
    );
    send(
        &mta,
        "alice@example.test",
        &["carol@far.test"],
        "over the connector",
    );
    // The smart host is down: the message waits in the connector's queue.
    let queue = dir.path("mta-data/queue/delivery-send-Internet");
    assert!(
        wait_until(WAIT, || std::fs::read_dir(&queue)
            .map(|d| d.count())
            .unwrap_or(0)
            == 1),
        "{}",
        mta.log()
    );
    // Bring the smart host up.
    remote_dir.write(
        "mta.toml",
        &format!(
            "data_dir = \"mta-data\"\n[organization]\naccepted_domains = [\"far.test\"]\nmailboxes = [\"carol\"]\n[transport]\nlisten = \"127.0.0.1:{remote_port}\"\n[frontend]\nlisten = \"127.0.0.1:{}\"\n[mailbox]\nlisten = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    );
    let mut remote = Command::new(mta_bin())
        .current_dir(&remote_dir.0)
        .args(["--config", "mta.toml", "run"])
        .stderr(std::fs::File::create(remote_dir.path("mta.log")).unwrap())
        .spawn()
        .unwrap();
    let delivered = wait_until(Duration::from_secs(60), || {
        !maildir_messages(&remote_dir.path("mta-data/mailboxes/carol")).is_empty()
    });
    let _ = remote.kill();
    let _ = remote.wait();
    assert!(
        delivered,
        "{}\n{}",
        mta.log(),
        std::fs::read_to_string(remote_dir.path("mta.log")).unwrap_or_default()
    );
    let message = &maildir_messages(&remote_dir.path("mta-data/mailboxes/carol"))[0];
    assert!(
        message.contains("Subject: over the connector")
            && message.contains("body of over the connector"),
        "{message}"
    );
    assert!(
        message.contains("with ESMTPS"),
        "opportunistic STARTTLS was used: {message}"
    );
    assert!(wait_until(WAIT, || std::fs::read_dir(&queue)
        .map(|d| d.count())
        .unwrap_or(1)
        == 0));
}

#[test]
fn a_foreign_connector_writes_replay_files_to_its_drop_directory() {
    let dir = TestDir::new("foreign");
    let drop_dir = dir.path("fax-drop");
    let mta = Mta::start(
        &dir,
        &format!(
            "{FAST_RETRY}\n[[foreign_connectors]]\nname = \"Fax\"\naddress_spaces = [\"SMTP:fax.test;1\"]\ndrop_directory = \"fax-drop\"\n"
        ),
        &[],
    );
    send(&mta, "alice@example.test", &["+1555@fax.test"], "a fax");
    // The drop directory is missing: the queue retries; creating it lets the file through.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        mta.log().contains("Drop directory") || mta.log().contains("Delivery deferred."),
        "{}",
        mta.log()
    );
    std::fs::create_dir_all(&drop_dir).unwrap();
    // The finished file (the connector writes a hidden .tmp first, then renames it).
    let finished = || {
        std::fs::read_dir(&drop_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "eml"))
    };
    assert!(wait_until(WAIT, || finished().is_some()), "{}", mta.log());
    let file = finished().unwrap();
    assert_eq!(
        std::fs::read_dir(&drop_dir).unwrap().count(),
        1,
        "one file, no leftovers"
    );
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mta.example.test-") && name.ends_with("Z.0.eml"),
        "{name}"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("X-Sender: <alice@example.test>\r\nX-Receiver: <+1555@fax.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("Subject: a fax"));
}

#[test]
fn the_text_messaging_pair_forks_mobile_recipients_to_their_gateway() {
    let dir = TestDir::new("mobile");
    let spool = dir.path("sms-spool");
    std::fs::create_dir_all(&spool).unwrap();
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[
                Entry {
                    name: "Mobile Router",
                    base_type: "RoutingAgent",
                    factory: "Mta.Samples.RecipientRouterFactory",
                    assembly: lib("recipient-router").display().to_string(),
                    enabled: true,
                    params: vec![
                        ("pattern", "*@mobile.example.test".into()),
                        ("routing_domain", "MOBILE".into()),
                        ("fork", "true".into()),
                    ],
                },
                Entry {
                    name: "Text Messaging",
                    base_type: "DeliveryAgent",
                    factory: "Mta.Samples.TextMessagingFactory",
                    assembly: lib("text-messaging").display().to_string(),
                    enabled: true,
                    params: vec![("spool", spool.display().to_string())],
                },
            ],
        ),
    );
    let mta = Mta::start(
        &dir,
        &format!(
            "[agents]\ntransport = \"agents.config\"\n{FAST_RETRY}\n[[delivery_agent_connectors]]\nname = \"Text Messaging Delivery Agent Connector\"\naddress_spaces = [\"MOBILE:*;1\"]\ndelivery_protocol = \"MOBILE\"\n"
        ),
        &[],
    );
    send(
        &mta,
        "ops@elsewhere.test",
        &["alice@example.test", "+15551234@mobile.example.test"],
        "disk full",
    );
    // The finished text (the agent writes a hidden .tmp first, then renames it).
    let texts = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "sms"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(wait_until(WAIT, || texts().len() == 1), "{}", mta.log());
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    let text = std::fs::read_to_string(&texts()[0]).unwrap();
    assert_eq!(
        text,
        "To: +15551234\nFrom: ops@elsewhere.test\n\ndisk full: body of disk full\n"
    );
    assert!(mta.log().contains("Mail item forked."));
}

#[test]
fn a_routing_loop_is_refused_in_the_session_and_reported_when_it_comes_from_a_directory() {
    let dir = TestDir::new("loop");
    let mta = Mta::start(&dir, "", &[]);
    let mut message = String::new();
    for i in 0..21 {
        message.push_str(&format!(
            "Received: from hop{i}.test by hop{}.test; Wed, 25 Nov 2026 10:00:00 +0000\n",
            i + 1
        ));
    }
    message.push_str("Subject: looping\n\nround and round\n");
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail("bob@example.test", &["alice@example.test"], &message);
    assert_eq!((r.code, r.enhanced()), (554, "5.4.6".to_string()), "{r:?}");
    smtp.quit();
    // What no client can be told comes back as a report: a looping file of the pickup directory.
    dir.write(
        "mta-data/pickup/loop.eml",
        &format!("From: bob@example.test\nTo: alice@example.test\n{message}").replace('\n', "\r\n"),
    );
    assert!(
        wait_until(WAIT, || mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("alice").is_empty());
    let path = std::fs::read_dir(dir.path("mta-data/mailboxes/bob/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let check = format!(
        r#"
import email
m = email.message_from_binary_file(open('{}', 'rb'))
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status'
parts = m.get_payload()
assert parts[0].get_content_type() == 'text/plain'
assert parts[1].get_content_type() == 'message/delivery-status'
status = parts[1].get_payload()
fields = {{}}
for block in status:
    for k, v in block.items():
        fields[k] = v
assert fields['Action'] == 'failed', fields
assert fields['Status'] == '5.4.6', fields
assert fields['Final-Recipient'] == 'rfc822; alice@example.test', fields
assert parts[2].get_content_type() == 'text/rfc822-headers'
assert m['Subject'] == 'Undeliverable: looping'
"#,
        path.display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&check)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal SMTP server that does not offer 8BITMIME; returns what DATA carried, and how
/// many connections it accepted.
type Shared<T> = Arc<Mutex<T>>;

fn seven_bit_server() -> (u16, Shared<Vec<String>>, Shared<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&messages);
    let connections = Arc::new(Mutex::new(0usize));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut out) = stream else { continue };
            *counter.lock().unwrap() += 1;
            let mut reader = BufReader::new(out.try_clone().unwrap());
            let _ = out.write_all(b"220 old.test ESMTP\r\n");
            let mut data: Option<String> = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(body) = data.as_mut() {
                    if line == ".\r\n" {
                        store.lock().unwrap().push(data.take().unwrap());
                        let _ = out.write_all(b"250 2.0.0 ok\r\n");
                    } else {
                        body.push_str(&line);
                    }
                    continue;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let answer: &[u8] = match verb.as_str() {
                    "EHLO" => b"250-old.test\r\n250 PIPELINING\r\n",
                    "DATA" => {
                        data = Some(String::new());
                        b"354 go ahead\r\n"
                    }
                    "QUIT" => {
                        let _ = out.write_all(b"221 bye\r\n");
                        break;
                    }
                    _ => b"250 2.0.0 ok\r\n",
                };
                let _ = out.write_all(answer);
            }
        }
    });
    (port, messages, connections)
}

#[test]
fn eight_bit_content_is_converted_for_a_next_hop_without_8bitmime() {
    let (port, messages, connections) = seven_bit_server();
    let dir = TestDir::new("8bit");
    let mta = Mta::start(
        &dir,
        &format!(
            "{FAST_RETRY}\n[[send_connectors]]\nname = \"Old\"\naddress_spaces = [\"SMTP:old.test;1\"]\nsmart_hosts = [\"127.0.0.1:{port}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.cmd("MAIL FROM:<alice@example.test> BODY=8BITMIME")
            .code,
        250
    );
    assert_eq!(smtp.cmd("RCPT TO:<dan@old.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send("Subject: caf\u{e9}s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nUn caf\u{e9} cr\u{e8}me\r\n.\r\n".replace("Subject: caf\u{e9}s", "Subject: cafes").as_bytes());
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(
        wait_until(WAIT, || messages.lock().unwrap().len() == 1),
        "{}",
        mta.log()
    );
    let got = messages.lock().unwrap()[0].clone();
    assert!(got.is_ascii(), "{got}");
    assert!(
        got.contains("Content-Transfer-Encoding: quoted-printable"),
        "{got}"
    );
    assert!(got.contains("Un caf=C3=A9 cr=C3=A8me"), "{got}");
    // Later messages to the same next hop reuse the connection.
    for i in 0..3 {
        send(
            &mta,
            "alice@example.test",
            &["dan@old.test"],
            &format!("again {i}"),
        );
        assert!(wait_until(WAIT, || messages.lock().unwrap().len() == 2 + i));
    }
    assert_eq!(
        *connections.lock().unwrap(),
        1,
        "one connection for four messages"
    );
}

#[test]
fn connector_list_shows_every_connector_and_what_serves_it() {
    let dir = TestDir::new("connector-list");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry {
                name: "Texts",
                base_type: "DeliveryAgent",
                factory: "Mta.Samples.TextMessagingFactory",
                assembly: lib("text-messaging").display().to_string(),
                enabled: true,
                params: vec![("spool", "/tmp".into())],
            }],
        ),
    );
    dir.write(
        "mta.toml",
        "[agents]\ntransport = \"agents.config\"\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;2\"]\nsmart_hosts = [\"127.0.0.1:1\"]\n[[delivery_agent_connectors]]\nname = \"SMS\"\naddress_spaces = [\"MOBILE:*\"]\ndelivery_protocol = \"MOBILE\"\n[[delivery_agent_connectors]]\nname = \"Pager\"\naddress_spaces = [\"PAGER:*\"]\ndelivery_protocol = \"PAGER\"\n[[foreign_connectors]]\nname = \"Fax\"\naddress_spaces = [\"FAX:*\"]\ndrop_directory = \"nowhere\"\n",
    );
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--config",
            dir.path("mta.toml").to_str().unwrap(),
            "connector",
            "list",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Send connector \"Internet\" (enabled)")
            && out.contains("SMTP:*;2")
            && out.contains("127.0.0.1:1"),
        "{out}"
    );
    assert!(
        out.contains("delivery protocol: MOBILE (served by agent \"Texts\")"),
        "{out}"
    );
    assert!(
        out.contains(
            "delivery protocol: PAGER (served by no enabled delivery agent; the queue retries)"
        ),
        "{out}"
    );
    assert!(
        out.contains("Foreign connector \"Fax\"") && out.contains("(missing: the queue retries)"),
        "{out}"
    );
}

/// A DNS server (Python's dnslib) for far.test (MX mx.far.test -> 127.0.0.1), nomail.test
/// (null MX) and NXDOMAIN for everything else.
fn dns_server(port: u16) -> std::process::Child {
    let script = format!(
        r#"
import time
from dnslib import RR, QTYPE, MX, A
from dnslib.server import DNSServer, BaseResolver
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name, qtype = str(request.q.qname).lower(), request.q.qtype
        if name == 'far.test.' and qtype == QTYPE.MX:
            reply.add_answer(RR('far.test.', QTYPE.MX, rdata=MX('mx.far.test.', 10), ttl=60))
        elif name == 'mx.far.test.' and qtype == QTYPE.A:
            reply.add_answer(RR('mx.far.test.', QTYPE.A, rdata=A('127.0.0.1'), ttl=60))
        elif name == 'nomail.test.' and qtype == QTYPE.MX:
            reply.add_answer(RR('nomail.test.', QTYPE.MX, rdata=MX('.', 0), ttl=60))
        elif name in ('far.test.', 'mx.far.test.', 'nomail.test.'):
            pass
        else:
            reply.header.rcode = 3
        return reply
server = DNSServer(Zone(), port={port}, address='127.0.0.1')
server.start_thread()
time.sleep(120)
"#
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3 with dnslib")
}

#[test]
fn a_send_connector_without_smart_hosts_delivers_to_the_domains_mail_exchangers() {
    let dns_port = free_port();
    let mut dns = dns_server(dns_port);
    let remote_dir = TestDir::new("mx-remote");
    let remote = Mta::start_with(
        &remote_dir,
        &[],
        "[organization]\naccepted_domains = [\"far.test\"]\nmailboxes = [\"carol\"]\n",
        &[],
    );
    let dir = TestDir::new("mx");
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nrefuse_private_mx = false\nretry_base_ms = 100\nretry_max_ms = 400\ndns_servers = [\"127.0.0.1:{dns_port}\"]\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\nport = {}\n",
            remote.transport
        ),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the DNS server starts
    send(&mta, "alice@example.test", &["carol@far.test"], "by mx");
    send(
        &mta,
        "alice@example.test",
        &["x@nomail.test", "y@nx.test"],
        "no mail there",
    );
    let delivered = wait_until(WAIT, || remote.maildir("carol").len() == 1);
    // Each destination domain has its own queue, so each gets its own report.
    let ndr = wait_until(WAIT, || {
        mta.maildir("alice")
            .iter()
            .filter(|m| m.contains("Undeliverable: no mail there"))
            .count()
            == 2
    });
    let _ = dns.kill();
    let _ = dns.wait();
    assert!(delivered, "{}", mta.log());
    assert!(remote.maildir("carol")[0].contains("Subject: by mx"));
    assert!(ndr, "{}", mta.log());
    let report: String = mta
        .maildir("alice")
        .into_iter()
        .filter(|m| m.contains("no mail there"))
        .collect();
    assert!(
        report.contains("Status: 5.1.10") && report.contains("Status: 5.1.2"),
        "{report}"
    );
}

#[test]
fn a_message_past_its_expiration_fails_with_a_4_4_7_report() {
    let dir = TestDir::new("expiry");
    let dead = free_port();
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 100\nretry_max_ms = 200\nexpiration_hours = 0\n[[send_connectors]]\nname = \"Nowhere\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"127.0.0.1:{dead}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    send(&mta, "alice@example.test", &["zed@far.test"], "too late");
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Undeliverable: too late"))),
        "{}",
        mta.log()
    );
    let report = mta
        .maildir("alice")
        .into_iter()
        .find(|m| m.contains("too late"))
        .unwrap();
    assert!(
        report.contains("Action: failed") && report.contains("Status: 4.4.7"),
        "{report}"
    );
    let queue = dir.path("mta-data/queue/delivery-send-Nowhere");
    assert_eq!(
        std::fs::read_dir(&queue).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing left waiting"
    );
}

#[test]
fn a_delivery_agent_panicking_in_any_event_defers_and_loses_nothing() {
    let dir = TestDir::new("delivery-panic");
    let log = dir.path("delivery.log");
    let entries = |panic: &str| {
        vec![
            Entry {
                name: "Probe Router",
                base_type: "RoutingAgent",
                factory: "Mta.Samples.RecipientRouterFactory",
                assembly: lib("recipient-router").display().to_string(),
                enabled: true,
                params: vec![
                    ("pattern", "*@probe.test".into()),
                    ("routing_domain", "PROBE".into()),
                ],
            },
            Entry {
                name: "Delivery Probe",
                base_type: "DeliveryAgent",
                factory: "Tests.DeliveryProbeFactory",
                assembly: lib("route-probe").display().to_string(),
                enabled: true,
                params: vec![
                    ("log", log.display().to_string()),
                    ("panic", panic.to_string()),
                ],
            },
        ]
    };
    dir.write(
        "agents.config",
        &agents_xml(5000, &entries("OnOpenConnection")),
    );
    let mta = Mta::start(
        &dir,
        &format!(
            "[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n{FAST_RETRY}\n[[delivery_agent_connectors]]\nname = \"Probe\"\naddress_spaces = [\"PROBE:*;1\"]\ndelivery_protocol = \"PROBE\"\n"
        ),
        &[],
    );
    let queue = dir.path("mta-data/queue/delivery-agent-Probe");
    for (n, event) in ["OnOpenConnection", "OnDeliverMailItem"].iter().enumerate() {
        if n > 0 {
            dir.replace(
                "agents.config",
                agents_xml(5000, &entries(event)).as_bytes(),
            );
            assert!(wait_until(WAIT, || mta.generation("transport") == 2));
        }
        send(
            &mta,
            "alice@example.test",
            &[&format!("p{n}@probe.test")],
            &format!("panic in {event}"),
        );
        assert!(
            wait_until(WAIT, || mta
                .log()
                .matches(&format!("delivery probe panics in {event}"))
                .count()
                >= 1),
            "{}",
            mta.log()
        );
        assert!(
            wait_until(WAIT, || std::fs::read_dir(&queue)
                .map(|d| d.count())
                .unwrap_or(0)
                >= 1),
            "the copy waits for a retry"
        );
    }
    // The fixed agent delivers everything that waited; a panic in OnCloseConnection after the
    // ack does not undo the delivery.
    dir.replace(
        "agents.config",
        agents_xml(5000, &entries("OnCloseConnection")).as_bytes(),
    );
    assert!(wait_until(WAIT, || mta.generation("transport") == 3));
    assert!(
        wait_until(WAIT, || std::fs::read_dir(&queue)
            .map(|d| d.count())
            .unwrap_or(1)
            == 0),
        "{}",
        mta.log()
    );
    let delivered = probe_log(&log)
        .iter()
        .filter(|l| l.starts_with("OnDeliverMailItem"))
        .count();
    assert!(delivered >= 2, "{:?}", probe_log(&log));
    // The connection closes once it has been idle a moment.
    assert!(mta.wait_log("delivery probe panics in OnCloseConnection", 1, WAIT));
    assert!(
        !mta.maildir("alice")
            .iter()
            .any(|m| m.contains("Undeliverable")),
        "nothing failed"
    );
}

#[test]
fn a_routing_agent_panicking_in_any_event_sends_the_item_to_poison_after_two_faults() {
    let dir = TestDir::new("routing-panic");
    let log = dir.path("route.log");
    let events = [
        "OnSubmittedMessage",
        "OnResolvedMessage",
        "OnRoutedMessage",
        "OnCategorizedMessage",
    ];
    dir.write(
        "agents.config",
        &agents_xml(5000, &[route_probe(&log).param("panic_event", events[0])]),
    );
    let mta = Mta::start(
        &dir,
        &format!("[agents]\ntransport = \"agents.config\"\nreload_debounce_ms = 50\n{FAST_RETRY}"),
        &[],
    );
    let poison = dir.path("mta-data/queue/poison");
    for (n, event) in events.iter().enumerate() {
        if n > 0 {
            dir.replace(
                "agents.config",
                agents_xml(5000, &[route_probe(&log).param("panic_event", event)]).as_bytes(),
            );
            assert!(
                wait_until(WAIT, || mta.generation("transport") == n as u64 + 1),
                "{event}"
            );
        }
        send(
            &mta,
            "a@elsewhere.test",
            &["alice@example.test"],
            &format!("panic {n}"),
        );
        assert!(
            wait_until(WAIT, || std::fs::read_dir(&poison)
                .map(|d| d.count())
                .unwrap_or(0)
                == n + 1),
            "{event}: {}",
            mta.log()
        );
        assert!(mta
            .log()
            .contains(&format!("route probe panics in {event}")));
    }
    assert!(
        mta.maildir("alice").is_empty(),
        "nothing was delivered half-categorized"
    );
}

#[test]
fn notify_decides_which_failures_are_reported() {
    let dir = TestDir::new("notify");
    let mta = Mta::start(&dir, "", &[]);
    // Unknown users of a replay file fail after the message was taken: each file's NOTIFY
    // decides whether bob hears of it.
    for (n, (notify, subject)) in [
        ("NEVER", "never"),
        ("SUCCESS,DELAY", "no failure"),
        ("FAILURE", "failure"),
    ]
    .into_iter()
    .enumerate()
    {
        dir.write(
            &format!("mta-data/replay/{n}.eml"),
            &format!("X-Sender: <bob@example.test>\r\nX-Receiver: <nobody@example.test> NOTIFY={notify}\r\nSubject: {subject}\r\n\r\nx\r\n"),
        );
    }
    assert!(
        wait_until(WAIT, || mta
            .maildir("bob")
            .iter()
            .any(|m| m.contains("Undeliverable: failure"))),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let reports = mta.maildir("bob");
    assert_eq!(
        reports.len(),
        1,
        "NOTIFY=NEVER and a NOTIFY without FAILURE get no report: {reports:?}"
    );
    assert_eq!(
        mta.log().matches("Delivery failed.").count(),
        3,
        "every failure is logged"
    );
}

#[test]
fn a_message_needing_smtputf8_fails_towards_a_next_hop_without_it() {
    let (port, messages, _) = seven_bit_server();
    let dir = TestDir::new("smtputf8");
    let mta = Mta::start(
        &dir,
        &format!(
            "{FAST_RETRY}\n[[send_connectors]]\nname = \"Old\"\naddress_spaces = [\"SMTP:old.test;1\"]\nsmart_hosts = [\"127.0.0.1:{port}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(
        smtp.cmd("MAIL FROM:<alice@example.test> SMTPUTF8").code,
        250
    );
    assert_eq!(smtp.cmd("RCPT TO:<d\u{e4}n@old.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send("Subject: gr\u{fc}\u{df}e\r\n\r\nx\r\n.\r\n".as_bytes());
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Status: 5.6.7"))),
        "{}",
        mta.log()
    );
    assert!(
        messages.lock().unwrap().is_empty(),
        "nothing was sent to the next hop"
    );
}

#[test]
fn config_check_refuses_a_dns_server_without_a_port() {
    let dir = TestDir::new("dns-check");
    dir.write("mta.toml", "[routing]\ndns_servers = [\"8.8.8.8\"]\n");
    let (code, _, err) = run_mta(
        &dir.0,
        &[
            "--config",
            dir.path("mta.toml").to_str().unwrap(),
            "config",
            "check",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("[routing] dns_servers: \"8.8.8.8\" is not ip:port"),
        "{err}"
    );
}

#[test]
fn a_mail_exchanger_that_never_answers_the_connect_delays_the_next_only_by_the_connect_timeout() {
    let remote_dir = TestDir::new("mx-second-remote");
    let remote = Mta::start_with(
        &remote_dir,
        &[],
        "[organization]\naccepted_domains = [\"far.test\"]\nmailboxes = [\"carol\"]\n",
        &[],
    );
    // mx1.far.test (127.0.0.2) on the same port: a listener with a full accept queue, so
    // a connect to it hangs (its SYN is dropped).
    let mut blackhole = Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import socket, sys, time
l = socket.socket(); l.bind(('127.0.0.2', {port})); l.listen(0)
fill = []
for _ in range(3):
    s = socket.socket(); s.settimeout(0.3)
    try:
        s.connect(('127.0.0.2', {port})); fill.append(s)
    except OSError:
        pass
print('ready', flush=True)
time.sleep(120)
"#,
            port = remote.transport
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(blackhole.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    let dns_port = free_port();
    let script = format!(
        r#"
import time
from dnslib import RR, QTYPE, MX, A
from dnslib.server import DNSServer, BaseResolver
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name, qtype = str(request.q.qname).lower(), request.q.qtype
        if name == 'far.test.' and qtype == QTYPE.MX:
            reply.add_answer(RR('far.test.', QTYPE.MX, rdata=MX('mx1.far.test.', 10), ttl=60))
            reply.add_answer(RR('far.test.', QTYPE.MX, rdata=MX('mx2.far.test.', 20), ttl=60))
        elif name == 'mx1.far.test.' and qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A('127.0.0.2'), ttl=60))
        elif name == 'mx2.far.test.' and qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A('127.0.0.1'), ttl=60))
        return reply
server = DNSServer(Zone(), port={dns_port}, address='127.0.0.1')
server.start_thread()
time.sleep(120)
"#
    );
    let mut dns = Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .unwrap();
    let dir = TestDir::new("mx-second");
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nrefuse_private_mx = false\nconnect_timeout_ms = 1000\ndns_servers = [\"127.0.0.1:{dns_port}\"]\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\nport = {}\ntls = \"none\"\n",
            remote.transport
        ),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the DNS server starts
    let sent = std::time::Instant::now();
    send(&mta, "alice@example.test", &["carol@far.test"], "second mx");
    let delivered = wait_until(WAIT, || remote.maildir("carol").len() == 1);
    let took = sent.elapsed();
    let _ = dns.kill();
    let _ = dns.wait();
    let _ = blackhole.kill();
    let _ = blackhole.wait();
    assert!(delivered, "{}", mta.log());
    assert!(
        took < Duration::from_secs(8),
        "delivered after {took:?}: the first MX held it up past its connect timeout"
    );
    assert!(
        mta.log().contains("127.0.0.2"),
        "the first MX was tried: {}",
        mta.log()
    );
}

#[test]
fn mail_exchangers_on_loopback_private_addresses_or_this_host_are_refused() {
    let dns_port = free_port();
    let mut dns = dns_server(dns_port);
    let dir = TestDir::new("mx-refused");
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 100\nretry_max_ms = 400\ndns_servers = [\"127.0.0.1:{dns_port}\"]\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\n"
        ),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the DNS server starts
                                                    // far.test's MX is mx.far.test, 127.0.0.1: a domain's DNS pointing into this host.
    send(
        &mta,
        "alice@example.test",
        &["carol@far.test"],
        "into loopback",
    );
    let ndr = wait_until(WAIT, || {
        mta.maildir("alice")
            .iter()
            .any(|m| m.contains("Undeliverable: into loopback"))
    });
    let _ = dns.kill();
    let _ = dns.wait();
    assert!(ndr, "{}", mta.log());
    let report: String = mta.maildir("alice").concat();
    assert!(report.contains("Status: 5.4.4"), "{report}");
    assert!(report.contains("not a public address"), "{report}");
    assert!(
        mta.log().contains("Mail exchanger refused."),
        "{}",
        mta.log()
    );
}

/// Recipient resolution waits for OnResolvedMessage: a routing agent that redirects an unknown
/// user of our domains (an alias) gets it delivered with no report; an unknown user it leaves
/// alone fails with 5.1.1 and a report to the sender, as before.
#[test]
fn a_routing_agent_redirects_an_unknown_recipient_before_it_fails() {
    let dir = TestDir::new("resolve-redirect");
    let log = dir.path("route.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[route_probe(&log).param("redirect", "sales@example.test=alice@example.test")],
        ),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    // Replay files: taken whatever their recipients, so the categorizer meets unknown users.
    dir.write(
        "mta-data/replay/alias.eml",
        "X-Sender: <bob@example.test>\r\nX-Receiver: <sales@example.test>\r\nSubject: alias\r\n\r\nfor sales\r\n",
    );
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("alice")[0].contains("Subject: alias"));
    assert!(
        probe_log(&log)
            .iter()
            .any(|l| l == "OnResolvedMessage subject=alias rcpts=sales@example.test"),
        "the agent saw the unknown user at OnResolvedMessage: {:?}",
        probe_log(&log)
    );
    dir.write(
        "mta-data/replay/unknown.eml",
        "X-Sender: <bob@example.test>\r\nX-Receiver: <nobody@example.test>\r\nSubject: unknown\r\n\r\nfor no one\r\n",
    );
    assert!(
        wait_until(WAIT, || mta
            .maildir("bob")
            .iter()
            .any(|m| m.contains("Undeliverable: unknown"))),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    let reports = mta.maildir("bob");
    assert_eq!(
        reports.len(),
        1,
        "only the unknown user is reported: {reports:?}"
    );
    assert!(
        reports[0].contains("Status: 5.1.1")
            && reports[0].contains("Final-Recipient: rfc822; nobody@example.test"),
        "{}",
        reports[0]
    );
    assert_eq!(mta.maildir("alice").len(), 1);
}

/// The sample alias table through the real loader: its SMTP receive half answers
/// `RCPT TO:<sales@...>` for alice, its routing half redirects an alias named by a replay file;
/// an address it does not know is still refused at RCPT.
#[test]
fn the_sample_alias_table_serves_rcpt_to_and_directory_mail() {
    let dir = TestDir::new("sample-aliases");
    let alias = |name: &'static str, base_type: &'static str, factory: &'static str| Entry {
        name,
        base_type,
        factory,
        assembly: lib("recipient-router").display().to_string(),
        enabled: true,
        params: vec![
            ("alias", "sales@example.test=alice@example.test".to_string()),
            ("alias", "info@example.test=bob@example.test".to_string()),
        ],
    };
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[
                alias(
                    "Aliases",
                    "SmtpReceiveAgent",
                    "Mta.Samples.RecipientAliasFactory",
                ),
                alias(
                    "Alias routing",
                    "RoutingAgent",
                    "Mta.Samples.RecipientAliasRoutingFactory",
                ),
            ],
        ),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    let r = smtp.cmd("RCPT TO:<nobody@example.test>");
    assert_eq!((r.code, r.enhanced()), (550, "5.1.1".to_string()), "{r:?}");
    smtp.quit();
    send(
        &mta,
        "a@elsewhere.test",
        &["Sales@Example.Test"],
        "to sales",
    );
    dir.write(
        "mta-data/replay/info.eml",
        "X-Sender: <carol@elsewhere.test>\r\nX-Receiver: <info@example.test>\r\nSubject: to info\r\n\r\nx\r\n",
    );
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 1
            && mta.maildir("bob").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir("alice")[0].contains("Subject: to sales"));
    assert!(mta.maildir("bob")[0].contains("Subject: to info"));
}

#[test]
fn mail_exchanger_names_with_control_characters_or_at_full_length_never_stop_delivery() {
    // odd.test's mail exchangers: a name with a line break and a false log line in a label, and
    // a name of about the longest length DNS allows; the DNS server gives every name the
    // address 127.0.0.1 (refused for MX routing: loopback).
    let dns_port = free_port();
    let script = format!(
        r#"
import time
from dnslib import RR, QTYPE, MX, A, DNSLabel
from dnslib.server import DNSServer, BaseResolver
FORGED = DNSLabel([b'mx\r\n2026-01-01T00:00:00Z  INFO FORGED: line', b'odd', b'test'])
LONG = DNSLabel([b'a' * 63, b'b' * 63, b'c' * 63, b'd' * 50, b'odd', b'test'])
class Zone(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        qname, qtype = request.q.qname, request.q.qtype
        if str(qname).lower() == 'odd.test.' and qtype == QTYPE.MX:
            reply.add_answer(RR(qname, QTYPE.MX, rdata=MX(FORGED, 10), ttl=60))
            reply.add_answer(RR(qname, QTYPE.MX, rdata=MX(LONG, 20), ttl=60))
        elif qtype == QTYPE.A:
            reply.add_answer(RR(qname, QTYPE.A, rdata=A('127.0.0.1'), ttl=60))
        return reply
server = DNSServer(Zone(), port={dns_port}, address='127.0.0.1')
server.start_thread()
time.sleep(120)
"#
    );
    let mut dns = Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3 with dnslib");
    let dir = TestDir::new("mx-odd-names");
    let mut mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 100\nretry_max_ms = 400\ndns_servers = [\"127.0.0.1:{dns_port}\"]\n[[send_connectors]]\nname = \"Internet\"\naddress_spaces = [\"SMTP:*;1\"]\n"
        ),
        &[],
    );
    std::thread::sleep(Duration::from_millis(300)); // the DNS server starts
    send(&mta, "alice@example.test", &["x@odd.test"], "odd names");
    // The long name is refused for its address; the other cannot be looked up (the resolver
    // refuses its label): the copy waits, with the name escaped in its reason.
    let waited = mta.wait_log("Delivery deferred.", 2, WAIT);
    let _ = dns.kill();
    let _ = dns.wait();
    assert!(waited, "{}", mta.log());
    let log = mta.log();
    assert!(log.contains("Mail exchanger refused."), "{log}");
    assert!(log.contains("mx\\015\\012"), "the name, escaped: {log}");
    assert_eq!(mta.queued("delivery-send-Internet"), 1, "{log}");
    // The server goes on, and no name wrote a line of its own.
    send(&mta, "alice@example.test", &["bob@example.test"], "after");
    assert!(wait_until(WAIT, || mta.maildir("bob").len() == 1));
    assert!(mta.alive());
    let log = mta.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a DNS name wrote its own line:\n{log}"
    );
}
