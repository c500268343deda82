//! Delivery under adversity, from the operator's side: a next hop that is down, slow or
//! tarpitting holds up only its own queue.

mod support;

use std::time::{Duration, Instant};
use support::peer::{tarpit, Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Sends `count` messages to `to` over one session of the Transport port.
fn flood(mta: &Mta, to: &str, count: usize) {
    let mut smtp = Smtp::ehlo(mta.transport);
    for i in 0..count {
        let r = smtp.send_mail(
            "alice@example.test",
            &[to],
            &format!("Subject: flood {i}\n\nx\n"),
        );
        assert_eq!(r.code, 250, "{r:?}");
    }
    smtp.quit();
}

/// Delivery latency of `samples` messages to bob, one after another: from the 250 after the
/// data to the file in bob's Maildir. Returns them sorted.
fn local_latencies(mta: &Mta, samples: usize) -> Vec<Duration> {
    let mut out = Vec::new();
    let mut smtp = Smtp::ehlo(mta.transport);
    for i in 0..samples {
        let before = mta.maildir_raw("bob").len();
        let r = smtp.send_mail(
            "alice@example.test",
            &["bob@example.test"],
            &format!("Subject: probe {i}\n\nx\n"),
        );
        assert_eq!(r.code, 250);
        let t0 = Instant::now();
        assert!(
            wait_until(WAIT, || mta.maildir_raw("bob").len() > before),
            "local delivery waited: {}",
            mta.log()
        );
        out.push(t0.elapsed());
    }
    smtp.quit();
    out.sort();
    out
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100).saturating_sub(1)]
}

fn config(smart_host: &str) -> String {
    format!(
        "[routing]\nretry_base_ms = 100\nretry_max_ms = 1000\n[[send_connectors]]\nname = \"Slow\"\naddress_spaces = [\"SMTP:slow.test;1\"]\nsmart_hosts = [\"{smart_host}\"]\ntls = \"none\"\n"
    )
}

/// Local delivery with a flooded bad next hop, against the same node without the flood.
fn compare(bad_host: &str, flooded: usize) {
    let dir = TestDir::new("adversity-baseline");
    let mta = Mta::start(&dir, &config(bad_host), &[]);
    let baseline = local_latencies(&mta, 30);
    drop(mta);

    let dir = TestDir::new("adversity");
    let mta = Mta::start(&dir, &config(bad_host), &[]);
    flood(&mta, "x@slow.test", flooded);
    // Every copy for the bad next hop is queued (none is delivered) before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let during = local_latencies(&mta, 30);
    let (b, d) = (p99(&baseline), p99(&during));
    println!("p99 local delivery: {b:?} without, {d:?} with the bad next hop");
    assert!(
        d <= 2 * b.max(Duration::from_millis(50)),
        "p99 {d:?} against {b:?} without: {}",
        mta.log()
    );
}

#[test]
fn a_tarpitting_next_hop_holds_up_only_its_own_queue() {
    let port = tarpit();
    compare(&format!("127.0.0.1:{port}"), 200);
}

#[test]
fn a_next_hop_answering_every_command_after_30_seconds_holds_up_only_its_own_queue() {
    let slow = Peer::with(PeerConfig {
        delay: Duration::from_secs(30),
        ..PeerConfig::default()
    });
    compare(&slow.address(), 50);
}
