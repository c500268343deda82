//! Large messages: a body past the spool threshold goes to disk as it arrives, crosses every
//! hop byte for byte, survives a restart where it waits, and leaves no spool file behind.

mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A body of `lines` lines with CRLF endings: varied lengths, lines that start with a dot,
/// 8-bit bytes, a long line.
fn body(lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seed = 7u64;
    for i in 0..lines {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (seed >> 33) as usize % 120;
        if i % 97 == 0 {
            out.extend_from_slice(b".");
        }
        for j in 0..len {
            out.push(b"abcdefghij .=\xe9"[(j + i) % 14]);
        }
        if i % 1013 == 0 {
            out.extend(std::iter::repeat_n(b'L', 2000));
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 1024);
    let mut at_line_start = true;
    for (i, &b) in message.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && message[i - 1] == b'\r';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One transaction sending `message` (CRLF, not stuffed) in pieces; the reply to its data.
fn send(port: u16, to: &str, message: &[u8]) -> Reply {
    let mut smtp = Smtp::ehlo(port);
    assert_eq!(
        smtp.cmd("MAIL FROM:<someone@elsewhere.test> BODY=8BITMIME")
            .code,
        250
    );
    assert_eq!(smtp.cmd(&format!("RCPT TO:<{to}>")).code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    for piece in stuffed(message).chunks(50_000) {
        smtp.stream().write_all(piece).unwrap();
    }
    let r = smtp.read_reply();
    smtp.quit();
    r
}

fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn lf(bytes: &[u8]) -> Vec<u8> {
    support::lf(bytes)
}

#[test]
fn a_large_message_crosses_every_hop_byte_for_byte_and_leaves_no_spool_file() {
    let peer = Peer::start();
    let dir = TestDir::new("large-hops");
    let mta = Mta::start(
        &dir,
        &format!("[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n", peer.address()),
        &[],
    );
    let body = body(40_000); // about 2.4 MB
    let mut message = b"Subject: large\r\nFrom: someone@elsewhere.test\r\n\r\n".to_vec();
    message.extend_from_slice(&body);
    // Front End -> Transport -> Mailbox Transport -> Maildir.
    let r = send(mta.frontend, "alice@example.test", &message);
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        wait_until(WAIT, || mta.maildir_raw("alice").len() == 1),
        "{}",
        mta.log()
    );
    let stored = &mta.maildir_raw("alice")[0];
    assert!(
        stored.ends_with(&lf(&message)),
        "the Maildir copy is the message, LF line endings"
    );
    // Transport -> a next hop by a send connector.
    let r = send(mta.transport, "x@far.test", &message);
    assert_eq!(r.code, 250, "{r:?}");
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    let got = &peer.messages()[0];
    assert!(got.ends_with(&message), "byte for byte at the next hop");
    // Nothing is left in the spool directories once delivered.
    let spools = [dir.path("mta-data/queue/spool"), dir.path("mta-data/spool")];
    assert!(
        wait_until(WAIT, || spools.iter().all(|d| files(d).is_empty())),
        "{:?}",
        spools.iter().map(|d| files(d)).collect::<Vec<_>>()
    );
}

#[test]
fn a_large_message_waiting_for_its_next_hop_is_kept_by_link_and_delivered_once_after_a_restart() {
    let down = free_port();
    let dir = TestDir::new("large-restart");
    let mut mta = Mta::start(
        &dir,
        &format!("[routing]\nretry_base_ms = 200\nretry_max_ms = 500\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"127.0.0.1:{down}\"]\ntls = \"none\"\n"),
        &[],
    );
    let mut message = b"Subject: waits\r\n\r\n".to_vec();
    message.extend_from_slice(&body(20_000));
    assert_eq!(send(mta.transport, "x@far.test", &message).code, 250);
    let queue = dir.path("mta-data/queue/delivery-send-Out");
    assert!(
        wait_until(WAIT, || {
            let f = files(&queue);
            f.iter().any(|n| n.ends_with(".msg")) && f.iter().any(|n| n.ends_with(".body"))
        }),
        "the copy waits with its body beside it: {:?}\n{}",
        files(&queue),
        mta.log()
    );
    // The journal let go of it: the body lives on only as the queue's link.
    assert!(
        wait_until(WAIT, || files(&dir.path("mta-data/queue/spool")).is_empty()),
        "{:?}",
        files(&dir.path("mta-data/queue/spool"))
    );
    let msg = files(&queue)
        .into_iter()
        .find(|n| n.ends_with(".msg"))
        .unwrap();
    assert!(
        std::fs::metadata(queue.join(&msg)).unwrap().len() < 10_000,
        "the queue file holds the header block, not the body"
    );
    assert!(mta.stop().is_some_and(|s| s.success()));
    let peer = Peer::with(PeerConfig::default());
    let text = std::fs::read_to_string(&mta.config)
        .unwrap()
        .replace(&format!("127.0.0.1:{down}"), &peer.address());
    std::fs::write(&mta.config, text).unwrap();
    mta.spawn(&[]);
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    assert!(peer.messages()[0].ends_with(&message), "byte for byte");
    assert!(
        wait_until(WAIT, || files(&queue).is_empty()),
        "{:?}",
        files(&queue)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(peer.messages().len(), 1, "once");
}

#[test]
fn a_body_half_received_at_a_crash_leaves_no_spool_file_after_the_restart() {
    let dir = TestDir::new("large-crash");
    let mut mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<someone@elsewhere.test>").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.stream().write_all(b"Subject: cut\r\n\r\n").unwrap();
    let spool = dir.path("mta-data/queue/spool");
    let line = "y".repeat(98) + "\r\n";
    for _ in 0..5000 {
        smtp.stream().write_all(line.as_bytes()).unwrap();
    }
    assert!(
        wait_until(WAIT, || !files(&spool).is_empty()),
        "the body is being spooled"
    );
    mta.kill9();
    drop(smtp);
    assert!(!files(&spool).is_empty(), "the crash left it");
    mta.spawn(&[]);
    assert!(files(&spool).is_empty(), "{:?}", files(&spool));
    assert!(
        mta.maildir("alice").is_empty(),
        "a message never accepted is not delivered"
    );
}

#[test]
fn a_large_pickup_file_is_delivered_whole() {
    let dir = TestDir::new("large-pickup");
    let mta = Mta::start(&dir, "[directories]\npoll_interval_ms = 100\n", &[]);
    let body = lf(&body(60_000)); // LF line endings, as files have
    let mut file = b"From: op@example.test\nTo: alice@example.test\nSubject: picked\n\n".to_vec();
    file.extend_from_slice(&body);
    std::fs::write(dir.path("mta-data/pickup/big.tmp-write"), &file).unwrap();
    std::fs::rename(
        dir.path("mta-data/pickup/big.tmp-write"),
        dir.path("mta-data/pickup/big.eml"),
    )
    .unwrap();
    assert!(
        wait_until(WAIT, || mta.maildir_raw("alice").len() == 1),
        "{}",
        mta.log()
    );
    assert!(mta.maildir_raw("alice")[0].ends_with(&body));
    assert!(files(&dir.path("mta-data/pickup")).is_empty());
}

#[test]
fn a_large_8bit_message_is_converted_for_a_7bit_next_hop_a_piece_at_a_time() {
    let peer = Peer::with(PeerConfig {
        extensions: vec!["PIPELINING".into(), "SIZE 100000000".into()],
        ..PeerConfig::default()
    });
    let dir = TestDir::new("large-7bit");
    let mta = Mta::start(
        &dir,
        &format!("[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:far.test;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n", peer.address()),
        &[],
    );
    let body = body(20_000);
    let mut message =
        b"Subject: eight\r\nContent-Type: text/plain; charset=latin1\r\n\r\n".to_vec();
    message.extend_from_slice(&body);
    assert_eq!(send(mta.transport, "x@far.test", &message).code, 250);
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    let got = &peer.messages()[0];
    assert!(got.is_ascii(), "7-bit on the wire");
    let text = String::from_utf8_lossy(got);
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable"));
    let (_, encoded) = text.split_once("\r\n\r\n").unwrap();
    let decoded =
        mail_parser::decoders::quoted_printable::quoted_printable_decode(encoded.as_bytes())
            .expect("valid quoted-printable");
    assert_eq!(decoded, body, "decodes to the body sent");
    assert!(
        wait_until(WAIT, || files(&dir.path("mta-data/queue/spool")).is_empty()),
        "the converted copy's spool file is gone too: {:?}",
        files(&dir.path("mta-data/queue/spool"))
    );
}
