//! Async handlers (the SDK's `async_context`, Exchange's `GetAgentAsyncContext`) against the real
//! binary: a pending call holds none of the agents' threads, and the time limits still apply.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &TestDir, time_limit_ms: u64, pool_threads: usize, entries: &[Entry<'_>]) -> Mta {
    dir.write("agents.config", &agents_xml(time_limit_ms, entries));
    // Its Front End nodes are elsewhere: a client on loopback is an ordinary client, whose
    // OnConnect comes with the greeting.
    Mta::start_with(
        dir,
        &[("transport", "frontend_nodes = [\"192.0.2.1\"]")],
        &format!("[agents]\ntransport = \"agents.config\"\npool_threads = {pool_threads}\n"),
        &[],
    )
}

#[test]
fn fifty_sessions_waiting_300_ms_each_do_not_queue_behind_two_agent_threads() {
    let dir = TestDir::new("async50");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        5000,
        2,
        &[Entry::probe("Waiter", &log)
            .param("async_sleep", "OnMailCommand")
            .param("sleep_ms", "300")],
    );
    const SESSIONS: usize = 50;
    let ready = Arc::new(Barrier::new(SESSIONS + 1));
    let clients: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let ready = Arc::clone(&ready);
            let port = mta.transport;
            std::thread::spawn(move || {
                let mut smtp = Smtp::ehlo(port);
                ready.wait();
                let asked = Instant::now();
                let reply = smtp.cmd("MAIL FROM:<a@elsewhere.test>");
                let waited = asked.elapsed();
                smtp.quit();
                (reply.code, waited)
            })
        })
        .collect();
    ready.wait();
    let started = Instant::now();
    let results: Vec<(u16, Duration)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let wall = started.elapsed();
    for (code, waited) in &results {
        assert_eq!(*code, 250);
        // Each one did wait for its agent's completion.
        assert!(*waited >= Duration::from_millis(300), "{waited:?}");
    }
    // Synchronous waits on 2 threads would take 50 x 300 / 2 = 7,500 ms.
    assert!(
        wall < Duration::from_millis(2500),
        "{SESSIONS} sessions took {wall:?}"
    );
    assert!(wait_until(WAIT, || probe_events(&log, "Waiter")
        .iter()
        .filter(|e| *e == "OnMailCommand")
        .count()
        == SESSIONS));
    // The status file is rewritten every second: wait for it to count the calls.
    assert!(wait_until(WAIT, || mta.status("transport")["agents"][0]
        ["calls"]
        .as_u64()
        >= Some(SESSIONS as u64)));
    let agent = &mta.status("transport")["agents"][0];
    assert_eq!(agent["hung"].as_u64(), Some(0), "{agent}");
    assert_eq!(agent["too_slow"].as_u64(), Some(0), "{agent}");
    assert_eq!(agent["faults"].as_u64(), Some(0), "{agent}");
}

#[test]
fn the_completion_acts_on_the_event_and_the_next_agent_runs_after_it() {
    let dir = TestDir::new("asyncreject");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        5000,
        2,
        &[
            Entry::probe("First", &log)
                .param("async_sleep", "OnRcptCommand")
                .param("sleep_ms", "100")
                .param("reject_rcpt", "bob@example.test"),
            Entry::probe("Second", &log),
        ],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    let refused = smtp.cmd("RCPT TO:<bob@example.test>");
    assert_eq!(refused.code, 550, "{refused:?}");
    assert!(
        refused.text().contains("probe First rejects"),
        "{refused:?}"
    );
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    smtp.quit();
    // The reject in the completion stopped the event: Second saw only the accepted recipient.
    assert!(wait_until(WAIT, || probe_events(&log, "Second")
        .contains(&"OnDisconnect".to_string())));
    let second: Vec<String> = probe_log(&log)
        .into_iter()
        .filter(|l| l.starts_with("Second ") && l.contains("OnRcptCommand"))
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        second[0].contains("recipient=alice@example.test"),
        "{second:?}"
    );
}

#[test]
fn a_late_completion_is_too_slow_and_one_never_delivered_is_abandoned_as_hung() {
    let dir = TestDir::new("asynclate");
    let log = dir.path("probe.log");
    let mta = start(
        &dir,
        300,
        2,
        &[Entry::probe("Late", &log)
            .param("async_sleep", "OnMailCommand")
            .param("sleep_ms", "450")
            .param("async_never", "OnRcptCommand")
            .param("async_drop", "OnNoopCommand")],
    );
    let mut smtp = Smtp::ehlo(mta.transport);
    // Past the limit, before twice the limit: the completion applies and the call is too slow.
    assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
    assert!(mta.wait_log("Agent too slow.", 1, WAIT), "{}", mta.log());
    // A context dropped without completing is a fault.
    assert_eq!(smtp.cmd("NOOP").code, 451);
    // Never completed: abandoned at twice the limit, counted as hung, the session closed.
    let asked = Instant::now();
    let abandoned = smtp.cmd("RCPT TO:<alice@example.test>");
    assert_eq!(abandoned.code, 421, "{abandoned:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(600),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        mta.wait_log(
            "Agent did not complete its async call within twice its time limit",
            1,
            WAIT
        ),
        "{}",
        mta.log()
    );
    assert!(wait_until(WAIT, || mta.status("transport")["agents"][0]
        ["hung"]
        .as_u64()
        == Some(1)));
    let agent = &mta.status("transport")["agents"][0];
    assert!(agent["too_slow"].as_u64() >= Some(2), "{agent}");
    assert!(agent["faults"].as_u64() >= Some(2), "{agent}");
    let text = mta.log();
    assert!(
        text.contains("the agent dropped its async context without completing it"),
        "{text}"
    );
}

/// A DNS server process, stopped (and reaped) when the test ends, passed or failed.
struct DnsServer(std::process::Child);

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DNS server (dnslib) on 127.0.0.1:`port` answering A queries from `listed` (name -> address)
/// after `delay_ms`, NXDOMAIN for every other name.
fn dns(port: u16, listed: &[(&str, &str)], delay_ms: u64) -> DnsServer {
    let zone: String = listed
        .iter()
        .map(|(name, ip)| format!("{name:?}: {ip:?}, "))
        .collect();
    let script = format!(
        r#"
import time
from dnslib import RR, QTYPE, A, RCODE
from dnslib.server import DNSServer, BaseResolver
zone = {{{zone}}}
class Zone(BaseResolver):
    def resolve(self, request, handler):
        time.sleep({delay_ms} / 1000)
        reply = request.reply()
        name = str(request.q.qname).lower()
        if name in zone and QTYPE[request.q.qtype] == 'A':
            reply.add_answer(RR(name, QTYPE.A, rdata=A(zone[name]), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply
server = DNSServer(Zone(), port={port}, address='127.0.0.1')
server.start_thread()
time.sleep(120)
"#
    );
    let child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .spawn()
        .expect("python3 with dnslib");
    std::thread::sleep(Duration::from_millis(400));
    DnsServer(child)
}

fn dnsbl(zone: &str, server: &str) -> Entry<'static> {
    Entry {
        name: "Blocklist",
        base_type: "SmtpReceiveAgent",
        factory: "Samples.DnsblFactory",
        assembly: lib("dnsbl").display().to_string(),
        enabled: true,
        params: vec![("zone", zone.to_string()), ("server", server.to_string())],
    }
}

#[test]
fn the_dnsbl_sample_refuses_a_listed_client_after_an_async_lookup() {
    let dns_port = free_port();
    let _server = dns(
        dns_port,
        &[("1.0.0.127.bl.example.test.", "127.0.0.2")],
        200,
    );
    let dir = TestDir::new("dnsbl");
    let mta = start(
        &dir,
        5000,
        1,
        &[dnsbl("bl.example.test", &format!("127.0.0.1:{dns_port}"))],
    );
    // Ten clients at once, one agent thread, a DNS server that takes 200 ms per answer: each is
    // refused once its own lookup is answered, not after the others'.
    let started = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            let port = mta.transport;
            std::thread::spawn(move || Smtp::connect(port).1)
        })
        .collect();
    for client in clients {
        let greeting = client.join().unwrap();
        // On the wire: `554 5.7.1 Client address listed by a DNS blocklist`.
        assert_eq!(greeting.code, 554, "{greeting:?}");
        assert_eq!(
            greeting.lines,
            ["5.7.1 Client address listed by a DNS blocklist"],
            "{greeting:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        mta.log()
            .contains("127.0.0.1 is listed in bl.example.test (127.0.0.2)"),
        "{}",
        mta.log()
    );
}

#[test]
fn the_dnsbl_sample_lets_an_unlisted_client_in() {
    let dns_port = free_port();
    let _server = dns(dns_port, &[], 0);
    let dir = TestDir::new("dnsblclean");
    let mta = start(
        &dir,
        5000,
        1,
        &[dnsbl("bl.example.test", &format!("127.0.0.1:{dns_port}"))],
    );
    let (mut smtp, greeting) = Smtp::connect(mta.transport);
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(smtp.cmd("EHLO client.example.test").code, 250);
    smtp.quit();
}
