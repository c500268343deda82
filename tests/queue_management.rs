//! Queue and message management against a running server, over its control socket: a next hop
//! that is down and then up, a queue suspended across a restart, a message suspended,
//! exported, redirected and removed (with and without a report), an item released from Poison
//! once its agent is fixed, and listings read from the files when no server runs.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const QUEUE: &str = "delivery-send-Out";

/// `mta ARGS` against the test's configuration: (exit code, stdout, stderr).
fn mta_cmd(mta: &Mta, args: &[&str]) -> (i32, String, String) {
    let config = mta.config.display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    run_mta(&mta.dir, &all)
}

/// Sends a message to Transport; its queue id, from the 250 reply.
fn send(mta: &Mta, from: &str, to: &[&str], subject: &str) -> String {
    let mut smtp = Smtp::ehlo(mta.transport);
    let r = smtp.send_mail(
        from,
        to,
        &format!("Subject: {subject}\n\nbody of {subject}\n"),
    );
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    let text = r.text();
    text.split('<')
        .nth(1)
        .and_then(|t| t.split('>').next())
        .unwrap_or_else(|| panic!("no queue id in {text}"))
        .to_string()
}

/// The message list of the queue, as JSON.
fn listed(mta: &Mta, queue: &str) -> Vec<serde_json::Value> {
    let (_, out, _) = mta_cmd(mta, &["message", "list", "--queue", queue, "--json"]);
    serde_json::from_str(&out).unwrap_or_default()
}

fn state_of(mta: &Mta, id: &str) -> Option<String> {
    listed(mta, QUEUE)
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["state"].as_str().map(str::to_string))
}

fn subjects(peer: &Peer) -> Vec<String> {
    peer.messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn queues_and_messages_are_steered_live_while_a_next_hop_is_down_and_then_up() {
    let dir = TestDir::new("queue-management");
    let hop_port = free_port();
    let mut mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"127.0.0.1:{hop_port}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    let one = send(&mta, "alice@example.test", &["carol@faraway.test"], "one");
    let two = send(&mta, "alice@example.test", &["dave@faraway.test"], "two");
    assert!(
        wait_until(WAIT, || listed(&mta, QUEUE).len() == 2
            && listed(&mta, QUEUE)
                .iter()
                .all(|m| m["last_error"].is_string())),
        "{}",
        mta.log()
    );

    // Get-Queue: live, with its status and the next hop's last error.
    let (code, out, err) = mta_cmd(&mta, &["queue", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Live, from the running server (pid "),
        "{out}"
    );
    let row = out
        .lines()
        .find(|l| l.starts_with(QUEUE))
        .unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(1), Some(&"2"), "{out}");
    assert!(
        matches!(cols.get(2), Some(&"retry") | Some(&"active")),
        "{out}"
    );
    assert!(row.contains("127.0.0.1"), "the connection error: {out}");
    let (_, text, _) = mta_cmd(&mta, &["message", "list", "--sender", "alice@example.test"]);
    assert!(
        text.contains(&one) && text.contains(&two) && text.contains("last error:"),
        "{text}"
    );

    // Suspend-Queue, kept across a restart: with the next hop up, nothing goes out.
    let (code, out, _) = mta_cmd(&mta, &["queue", "suspend", QUEUE]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("{QUEUE}: suspended").as_str())
    );
    let (code, _, err) = mta_cmd(&mta, &["queue", "retry", QUEUE]);
    assert_eq!(code, 1);
    assert!(err.contains("is suspended"), "{err}");
    mta.stop();
    let (code, out, _) = mta_cmd(&mta, &["queue", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("From the queue files: no server is running."),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(QUEUE) && l.contains("suspended")),
        "{out}"
    );
    let peer = Peer::on_port(hop_port, PeerConfig::default());
    mta.spawn(&[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        peer.messages().is_empty(),
        "a suspended queue delivers nothing"
    );
    let (_, out, _) = mta_cmd(&mta, &["queue", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(QUEUE) && l.contains("suspended")),
        "{out}"
    );

    // Suspend-Message, then Resume-Queue: the other message goes, the suspended one stays.
    let (code, out, err) = mta_cmd(&mta, &["message", "suspend", &one]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("suspended"), "{out}");
    let (code, _, _) = mta_cmd(&mta, &["queue", "resume", QUEUE]);
    assert_eq!(code, 0);
    assert!(
        wait_until(WAIT, || subjects(&peer) == ["two"]),
        "{:?} {}",
        subjects(&peer),
        mta.log()
    );
    assert_eq!(state_of(&mta, &one).as_deref(), Some("suspended"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(subjects(&peer), ["two"], "the suspended message stays");
    // ... across a restart too.
    mta.stop();
    mta.spawn(&[]);
    assert!(wait_until(WAIT, || state_of(&mta, &one).as_deref()
        == Some("suspended")));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(subjects(&peer), ["two"], "still suspended after a restart");

    // Export-Message: the .eml as queued.
    let (code, eml, _) = mta_cmd(&mta, &["message", "export", &one]);
    assert_eq!(code, 0);
    assert!(
        eml.contains("Subject: one") && eml.contains("body of one"),
        "{eml}"
    );

    // Redirect: to bob's mailbox instead, and never to the next hop.
    let (code, out, err) = mta_cmd(
        &mta,
        &["message", "redirect", &one, "--to", "bob@example.test"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("redirected to bob@example.test"), "{out}");
    assert!(
        wait_until(WAIT, || mta
            .maildir("bob")
            .iter()
            .any(|m| m.contains("Subject: one"))),
        "{}",
        mta.log()
    );
    assert!(listed(&mta, QUEUE).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let redirected = |mta: &Mta| {
        mta.maildir("bob")
            .iter()
            .filter(|m| m.contains("Subject: one"))
            .count()
    };
    assert_eq!(redirected(&mta), 1, "delivered once");
    let (_, story, _) = mta_cmd(&mta, &["track", "--queue-id", &one]);
    assert!(story.contains("REDIRECT"), "{story}");

    // Remove-Message with and without a report: the next hop stops answering (the queue is
    // suspended again), two messages wait, one is removed silently, one with an NDR.
    mta_cmd(&mta, &["queue", "suspend", QUEUE]);
    let three = send(&mta, "alice@example.test", &["erin@faraway.test"], "three");
    let four = send(&mta, "alice@example.test", &["frank@faraway.test"], "four");
    assert!(wait_until(WAIT, || listed(&mta, QUEUE).len() == 2));
    let before = mta.maildir("alice").len();
    let (code, out, err) = mta_cmd(&mta, &["message", "remove", &three]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"), "{out}");
    let (code, _, _) = mta_cmd(&mta, &["message", "remove", &four, "--ndr"]);
    assert_eq!(code, 0);
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == before + 1),
        "one report, for the removal with --ndr: {}",
        mta.log()
    );
    let report = mta
        .maildir("alice")
        .into_iter()
        .find(|m| m.contains("5.3.0"))
        .unwrap_or_default();
    assert!(report.contains("frank@faraway.test"), "{report}");
    assert!(listed(&mta, QUEUE).is_empty());
    let (_, story, _) = mta_cmd(&mta, &["track", "--queue-id", &three]);
    assert!(story.contains("DROP"), "{story}");
    mta_cmd(&mta, &["queue", "resume", QUEUE]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        subjects(&peer),
        ["two"],
        "removed messages are never delivered"
    );

    // Unknown ids and queues are refused with a reason and exit 1.
    let (code, _, err) = mta_cmd(&mta, &["message", "remove", "NOSUCHID"]);
    assert_eq!(code, 1);
    assert!(err.contains("no message with queue id NOSUCHID"), "{err}");
    let (code, _, err) = mta_cmd(&mta, &["queue", "suspend", "poison"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a delivery queue"), "{err}");
}

#[test]
fn a_poison_message_is_released_once_its_agent_is_fixed_and_status_tells_the_server() {
    let dir = TestDir::new("queue-release");
    let log = dir.path("route.log");
    dir.write(
        "agents.config",
        &agents_xml(
            5000,
            &[Entry {
                name: "Route Probe",
                base_type: "RoutingAgent",
                factory: "Tests.RouteProbeFactory",
                assembly: lib("route-probe").display().to_string(),
                enabled: true,
                params: vec![
                    ("log", log.display().to_string()),
                    ("panic_subject", "poison me".to_string()),
                ],
            }],
        ),
    );
    let mta = Mta::start(
        &dir,
        "[agents]\ntransport = \"agents.config\"\n[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n",
        &[],
    );
    let id = send(
        &mta,
        "someone@elsewhere.test",
        &["alice@example.test"],
        "poison me",
    );
    assert!(
        wait_until(WAIT, || listed(&mta, "poison").len() == 1),
        "{}",
        mta.log()
    );
    let parked = &listed(&mta, "poison")[0];
    assert_eq!(parked["id"], id.as_str());
    assert!(
        parked["reason"]
            .as_str()
            .unwrap_or("")
            .contains("agent faults"),
        "{parked}"
    );
    // Suspending a parked message is refused: it waits for the operator already.
    let (code, _, err) = mta_cmd(&mta, &["message", "suspend", &id]);
    assert_eq!(code, 1);
    assert!(err.contains("poison"), "{err}");

    // mta status names the server, its pipeline and the queue.
    let (code, status, _) = mta_cmd(&mta, &["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(status.contains("running, pid"), "{status}");
    assert!(
        status.contains("agents pipeline generation 1, 1 agents"),
        "{status}"
    );
    assert!(status.contains("poison 1"), "{status}");

    // The agent is fixed: disabled with `mta agent` (which learns the running server's agents
    // file without --agents-config), then the message is released and delivered.
    let (code, out, err) = mta_cmd(&mta, &["agent", "disable", "Route Probe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.ends_with(&format!(
            "The running server (pid {}) now runs transport pipeline generation 2, 0 agents.\n",
            mta.pid()
        )),
        "{out}"
    );
    assert!(
        wait_until(WAIT, || mta_cmd(&mta, &["status"])
            .1
            .contains("generation 2, 0 agents")),
        "{}",
        mta.log()
    );
    let (code, out, err) = mta_cmd(&mta, &["message", "release", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("from poison"), "{out}");
    assert!(
        wait_until(WAIT, || mta
            .maildir("alice")
            .iter()
            .any(|m| m.contains("Subject: poison me"))),
        "{}",
        mta.log()
    );
    assert!(listed(&mta, "poison").is_empty());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mta.maildir("alice")
            .iter()
            .filter(|m| m.contains("Subject: poison me"))
            .count(),
        1,
        "delivered once"
    );
    let (_, story, _) = mta_cmd(&mta, &["track", "--queue-id", &id]);
    assert!(
        story.contains("POISONMESSAGE") && story.contains("RESUBMIT") && story.contains("DELIVER"),
        "{story}"
    );
}

#[test]
fn without_a_server_listings_come_from_the_files_and_changes_are_refused() {
    let dir = TestDir::new("queue-offline");
    let hop_port = free_port();
    let mut mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 60000\nretry_max_ms = 60000\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"127.0.0.1:{hop_port}\"]\ntls = \"none\"\n"
        ),
        &[],
    );
    let id = send(
        &mta,
        "alice@example.test",
        &["carol@faraway.test"],
        "offline",
    );
    assert!(
        wait_until(WAIT, || listed(&mta, QUEUE).len() == 1),
        "{}",
        mta.log()
    );
    mta.stop();
    let (code, out, _) = mta_cmd(
        &mta,
        &["message", "list", "--recipient", "carol@faraway.test"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("From the queue files: no server is running."),
        "{out}"
    );
    assert!(out.contains(&id) && out.contains(QUEUE), "{out}");
    let (code, eml, _) = mta_cmd(&mta, &["message", "export", &id]);
    assert_eq!(code, 0);
    assert!(eml.contains("Subject: offline"), "{eml}");
    let (code, _, err) = mta_cmd(&mta, &["message", "remove", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("no server is running"), "{err}");
    let (code, out, _) = mta_cmd(&mta, &["status"]);
    assert_eq!(code, 3, "{out}");
    // Nothing was lost: the message is still there for the next start.
    let (code, _, _) = mta_cmd(&mta, &["message", "list", "--queue", QUEUE]);
    assert_eq!(code, 0);
}

#[test]
fn another_local_user_cannot_use_the_control_socket() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root, to act as another user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = TestDir::new("control-socket-owner");
    let mta = Mta::start(&dir, "", &[]);
    let socket = dir.path("mta-data/run/control.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is its owner's alone");
    // Even with every directory on the way open to everyone, the socket's own mode keeps a
    // hostile local user out: it cannot connect, so it cannot ask for any change.
    for d in [
        dir.0.clone(),
        dir.path("mta-data"),
        dir.path("mta-data/run"),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let connect = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({:?})\nexcept PermissionError:\n    sys.exit(13)\ns.sendall(b'{{\"command\":\"queue-suspend\",\"queue\":\"delivery-mailbox\"}}\\n')\nprint(s.recv(4096).decode())\n",
        socket.display().to_string()
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &connect])
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(13), "nobody was let in");
    // Its owner is.
    let (code, out, _) = mta_cmd(&mta, &["status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        !std::fs::read_to_string(dir.path("mta-data/queue/suspended.json"))
            .unwrap_or_default()
            .contains("delivery-mailbox")
    );
}

#[test]
fn agent_commands_edit_the_agents_file_the_running_server_serves() {
    let dir = TestDir::new("control-agents-files");
    let log = dir.path("probe.log");
    // The server is told its agents file on its command line, not in mta.toml.
    dir.write(
        "elsewhere/transport-agents.xml",
        &agents_xml(5000, &[Entry::probe("Probe", &log)]),
    );
    let served = dir.path("elsewhere/transport-agents.xml");
    let mta = Mta::start(&dir, "", &["--agents-config", served.to_str().unwrap()]);
    let (code, out, err) = mta_cmd(&mta, &["agent", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("elsewhere/transport-agents.xml") && out.contains("Probe"),
        "{out}"
    );
    let (code, out, err) = mta_cmd(&mta, &["agent", "disable", "Probe"]);
    assert_eq!(code, 0, "{out}{err}");
    // The command waits for the running server's reload and reports it.
    assert_eq!(
        out,
        format!(
            "Disabled agent \"Probe\" in the transport service.\nThe running server (pid {}) now runs transport pipeline generation 2, 0 agents.\n",
            mta.pid()
        ),
        "{err}"
    );
    assert!(std::fs::read_to_string(&served)
        .unwrap()
        .contains("enabled=\"false\""));
    assert!(
        !dir.path("agents.config").exists(),
        "no file was made beside mta.toml"
    );
}

/// A server that is stopped (SIGSTOP, a debugger, a stuck process) neither answers its control
/// socket nor reloads: agent commands still finish, in seconds, and say so.
#[test]
fn agent_commands_do_not_hang_on_a_stopped_server() {
    let dir = TestDir::new("control-stopped");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(5000, &[Entry::probe("Probe", &log)]),
    );
    let mta = Mta::start(&dir, "[agents]\ntransport = \"agents.config\"\n", &[]);
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &mta.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    let started = std::time::Instant::now();
    let (code, out, err) = mta_cmd(&mta, &["agent", "disable", "Probe"]);
    let took = started.elapsed();
    signal("-CONT");
    assert_eq!(code, 0, "{out}{err}");
    // 15 s for the control socket, 5 for the reload: not the minutes a listing may take.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        err.contains("warning: the running server did not say which agents files it serves")
            && err.contains("no answer within 15 s"),
        "{err}"
    );
    assert!(
        out.ends_with(&format!(
            "The running server (pid {}) has not reloaded the file yet; `mta agent list` shows when it has.\n",
            mta.pid()
        )),
        "{out}"
    );
    // Running again, it takes the change in.
    assert!(
        mta.wait_log("Agent pipeline swapped.", 1, WAIT),
        "{}",
        mta.log()
    );
}

#[test]
fn a_copy_being_delivered_is_never_taken_from_under_its_delivery() {
    // A next hop that takes two seconds over each reply: the copy stays in flight meanwhile.
    let peer = Peer::with(PeerConfig {
        delay: Duration::from_secs(2),
        ..PeerConfig::default()
    });
    let dir = TestDir::new("queue-in-flight");
    let mta = Mta::start(
        &dir,
        &format!(
            "[routing]\nretry_base_ms = 200\nretry_max_ms = 400\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
            peer.address()
        ),
        &[],
    );
    let id = send(&mta, "alice@example.test", &["carol@faraway.test"], "slow");
    assert!(
        wait_until(WAIT, || state_of(&mta, &id).as_deref() == Some("in-flight")),
        "{}",
        mta.log()
    );
    for refused in [
        vec!["message", "remove", id.as_str()],
        vec![
            "message",
            "redirect",
            id.as_str(),
            "--to",
            "bob@example.test",
        ],
    ] {
        let (code, _, err) = mta_cmd(&mta, &refused);
        assert_eq!(code, 1, "{refused:?}");
        assert!(err.contains("is being delivered right now"), "{err}");
    }
    // The attempt finishes as it began: delivered once, to its own recipient only.
    assert!(
        wait_until(WAIT, || subjects(&peer) == ["slow"]),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(subjects(&peer), ["slow"]);
    assert!(mta.maildir("bob").is_empty());
}
