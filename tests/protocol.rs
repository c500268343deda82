//! Protocol integrity over real sockets, from a hostile client's side: ESMTP parameters are
//! values that are re-encoded on every hop and never written raw, only CRLF "." CRLF ends DATA,
//! bodies pass every hop byte for byte, a recipient limit batches instead of closing the
//! session, and what is not offered is refused.

mod support;

use std::time::Duration;
use support::peer::{Peer, PeerConfig};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A send connector for every remote domain, to `peer`, with quick retries.
fn relay_to(peer: &Peer) -> String {
    format!(
        "[routing]\nretry_base_ms = 100\nretry_max_ms = 400\n[[send_connectors]]\nname = \"Out\"\naddress_spaces = [\"SMTP:*;1\"]\nsmart_hosts = [\"{}\"]\ntls = \"none\"\n",
        peer.address()
    )
}

/// Dot-stuffs `body` the way RFC 5321 4.5.2 says (a line, after CRLF, starting with a dot gets
/// another), then appends the end of data.
fn stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && body[i - 1] == b'\r';
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[test]
fn control_characters_in_esmtp_parameters_are_refused_and_the_hops_stay_in_step() {
    let peer = Peer::start();
    let dir = TestDir::new("params-injection");
    let mta = Mta::start(&dir, &relay_to(&peer), &[]);
    for port in [mta.frontend, mta.transport] {
        let mut smtp = Smtp::ehlo(port);
        let r =
            smtp.cmd("MAIL FROM:<a@elsewhere.test> ENVID=x+0D+0ARCPT+20TO:<victim@faraway.test>");
        assert_eq!((r.code, r.enhanced()), (501, "5.5.4".into()), "{r:?}");
        assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
        for bad in [
            "RCPT TO:<alice@example.test> ORCPT=rfc822;a+0D+0Ab@example.test",
            "RCPT TO:<alice@example.test> ORCPT=rfc822;alice+00@example.test",
        ] {
            let r = smtp.cmd(bad);
            assert_eq!(
                (r.code, r.enhanced()),
                (501, "5.5.4".into()),
                "{bad}: {r:?}"
            );
        }
        assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
        assert_eq!(smtp.cmd("DATA").code, 354);
        smtp.send(b"Subject: in step\r\n\r\nhello\r\n.\r\n");
        let r = smtp.read_reply();
        assert_eq!(r.code, 250, "{r:?}");
        smtp.quit();
    }
    assert!(
        wait_until(WAIT, || mta.maildir("alice").len() == 2),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(peer.connections().is_empty(), "nothing went to the victim");
    assert_eq!(mta.maildir("alice").len(), 2);
}

#[test]
fn envelope_parameters_are_re_encoded_as_xtext_on_every_hop() {
    let peer = Peer::start();
    let dir = TestDir::new("params-xtext");
    let mta = Mta::start_with(
        &dir,
        &[("frontend", "trusted = [\"127.0.0.1\"]")],
        &relay_to(&peer),
        &[],
    );
    let mut smtp = Smtp::ehlo(mta.frontend);
    let r = smtp.cmd("MAIL FROM:<a@example.test> RET=HDRS ENVID=QQ+2B1+3Dx");
    assert_eq!(r.code, 250, "{r:?}");
    let r =
        smtp.cmd("RCPT TO:<carol@far.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;carol+2Bfar@far.test");
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: xtext\r\n\r\nhello\r\n.\r\n");
    assert_eq!(smtp.read_reply().code, 250);
    smtp.quit();
    assert!(
        wait_until(WAIT, || peer.messages().len() == 1),
        "{}",
        mta.log()
    );
    let commands = peer.connections()[0].commands.join("\n");
    assert!(commands.contains("ENVID=QQ+2B1+3Dx"), "{commands}");
    assert!(commands.contains("RET=HDRS"), "{commands}");
    assert!(
        commands.contains("ORCPT=rfc822;carol+2Bfar@far.test"),
        "{commands}"
    );
    assert!(commands.contains("NOTIFY=FAILURE,DELAY"), "{commands}");
}

#[test]
fn only_crlf_dot_crlf_ends_data_on_both_ports() {
    let dir = TestDir::new("smuggling-variants");
    let mta = Mta::start(&dir, "", &[]);
    let mut sent = 0;
    for port in [mta.frontend, mta.transport] {
        for terminator in [&b".\r\r\n"[..], b".\r\r\r\n", b".\n", b"\n.\r\n"] {
            let mut smtp = Smtp::ehlo(port);
            assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
            assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
            assert_eq!(smtp.cmd("DATA").code, 354);
            let mut data = b"Subject: smuggler\r\n\r\nfirst\r\n".to_vec();
            data.extend_from_slice(terminator);
            data.extend_from_slice(b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nFrom: ceo@example.test\r\n\r\nforged\r\n.\r\n");
            smtp.send(&data);
            let r = smtp.read_reply();
            assert_eq!(r.code, 250, "{r:?}");
            sent += 1;
            // Only one reply: the next command's reply is the QUIT's.
            let r = smtp.cmd("QUIT");
            assert_eq!(r.code, 221, "{terminator:?}: {r:?}");
        }
    }
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == sent));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        mta.maildir("bob").is_empty(),
        "a second message was smuggled"
    );
    for m in mta.maildir("alice") {
        assert!(m.contains("forged"), "the rest is body: {m}");
    }
}

#[test]
fn dot_stuffing_is_undone_exactly_so_bodies_pass_every_hop_byte_for_byte() {
    let peer = Peer::start();
    let dir = TestDir::new("dots");
    let mta = Mta::start(&dir, &relay_to(&peer), &[]);
    let bodies: [&[u8]; 5] = [
        b"a\n.\nb\r\n",
        b"x\r\n.\ny\r\n",
        b".\r\n..\r\n.x\r\n\r\n",
        b"end\r\n.\r\r\nnot the end\r\n",
        b"nul\x00 and bare\rcr\r\n",
    ];
    for (i, body) in bodies.iter().enumerate() {
        for (port, to) in [
            (mta.frontend, "alice@example.test"),
            (mta.transport, "carol@far.test"),
        ] {
            let mut smtp = Smtp::ehlo(port);
            assert_eq!(smtp.cmd("MAIL FROM:<a@example.test>").code, 250);
            assert_eq!(smtp.cmd(&format!("RCPT TO:<{to}>")).code, 250);
            assert_eq!(smtp.cmd("DATA").code, 354);
            let mut message = format!("Subject: dots {i}\r\n\r\n").into_bytes();
            message.extend_from_slice(body);
            smtp.send(&stuffed(&message));
            assert_eq!(smtp.read_reply().code, 250);
            smtp.quit();
        }
    }
    let n = bodies.len();
    assert!(
        wait_until(WAIT, || mta.maildir_raw("alice").len() == n
            && peer.messages().len() == n),
        "{}",
        mta.log()
    );
    for (i, body) in bodies.iter().enumerate() {
        let subject = format!("Subject: dots {i}");
        let stored = mta
            .maildir_raw("alice")
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains(&subject))
            .unwrap();
        assert_eq!(
            body_of(&stored),
            lf(body).as_slice(),
            "Maildir, case {i}: {:?}",
            String::from_utf8_lossy(&stored)
        );
        let relayed = peer
            .messages()
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains(&subject))
            .unwrap();
        assert_eq!(body_of(&relayed), *body, "next hop, case {i}");
    }
}

/// A small deterministic generator, so a failing case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A body of bare CR, bare LF, CRLF, dots at line starts, NUL, 8-bit bytes and long lines,
    /// ending in CRLF as every SMTP message does.
    fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        for _ in 0..(self.next() % 40) {
            match self.next() % 10 {
                0 => body.extend_from_slice(b"\r\n"),
                1 => body.push(b'\n'),
                2 => body.push(b'\r'),
                3 => body.extend_from_slice(b"\r\n."),
                4 => body.push(0),
                5 => body.push(0x80 | (self.next() % 128) as u8),
                6 => body.extend(std::iter::repeat_n(b'x', 1200)),
                7 => body.extend_from_slice(b"\r\n.\r"),
                _ => body.extend_from_slice(b"text ."),
            }
        }
        body.extend_from_slice(b"\r\n");
        body
    }
}

#[test]
fn random_bodies_arrive_byte_identical_through_every_service() {
    let peer = Peer::start();
    let dir = TestDir::new("random-bodies");
    let mta = Mta::start(&dir, &relay_to(&peer), &[]);
    let seed = 0x5eed_0fb0_d1e5;
    let mut rng = Rng(seed);
    let cases: Vec<Vec<u8>> = (0..60).map(|_| rng.body()).collect();
    // Front End -> Transport -> Mailbox, and Transport -> a next hop, in one session each.
    for (port, to) in [
        (mta.frontend, "alice@example.test"),
        (mta.transport, "carol@far.test"),
    ] {
        let mut smtp = Smtp::ehlo(port);
        for (i, body) in cases.iter().enumerate() {
            assert_eq!(smtp.cmd("MAIL FROM:<a@example.test>").code, 250);
            assert_eq!(smtp.cmd(&format!("RCPT TO:<{to}>")).code, 250);
            assert_eq!(smtp.cmd("DATA").code, 354);
            let mut message = format!("Subject: case {i:03}\r\n\r\n").into_bytes();
            message.extend_from_slice(body);
            smtp.send(&stuffed(&message));
            let r = smtp.read_reply();
            assert_eq!(r.code, 250, "case {i} of seed {seed:#x}: {r:?}");
        }
        smtp.quit();
    }
    let n = cases.len();
    assert!(
        wait_until(WAIT, || mta.maildir_raw("alice").len() == n
            && peer.messages().len() == n),
        "{}",
        mta.log()
    );
    let stored = mta.maildir_raw("alice");
    let relayed = peer.messages();
    for (i, body) in cases.iter().enumerate() {
        let subject = format!("Subject: case {i:03}");
        let find = |all: &[Vec<u8>]| {
            all.iter()
                .find(|m| m.windows(subject.len()).any(|w| w == subject.as_bytes()))
                .cloned()
                .unwrap_or_else(|| panic!("case {i} of seed {seed:#x} is missing"))
        };
        assert_eq!(
            body_of(&find(&stored)),
            lf(body).as_slice(),
            "Maildir, case {i} of seed {seed:#x}"
        );
        assert_eq!(
            body_of(&find(&relayed)),
            body.as_slice(),
            "next hop, case {i} of seed {seed:#x}"
        );
    }
}

#[test]
fn a_thousand_recipients_from_smtplib_are_delivered_in_batches() {
    let peer = Peer::with(PeerConfig {
        max_recipients: 100,
        ..PeerConfig::default()
    });
    let dir = TestDir::new("thousand");
    let mta = Mta::start(&dir, &relay_to(&peer), &[]);
    let rounds = python(&format!(
        r#"
import smtplib
pending = ['r%d@far.test' % i for i in range(1000)]
s = smtplib.SMTP('127.0.0.1', {port})
rounds = 0
while pending:
    rounds += 1
    assert rounds < 20, rounds
    refused = s.sendmail('a@example.test', pending, 'Subject: many\r\n\r\nhello\r\n')
    assert all(code == 452 for code, _ in refused.values()), refused
    pending = list(refused)
s.quit()
print(rounds)
"#,
        port = mta.transport
    ));
    assert_eq!(rounds.trim(), "5", "200 recipients per transaction");
    assert!(
        wait_until(WAIT, || peer.delivered_to().len() >= 1000),
        "{}",
        mta.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut got = peer.delivered_to();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 1000, "every recipient once");
    assert_eq!(peer.delivered_to().len(), 1000, "no recipient twice");
    assert!(
        peer.connections()
            .iter()
            .all(|c| c.delivered_to.iter().all(|t| t.len() <= 100)),
        "the next hop's own limit is respected"
    );
}

#[test]
fn what_is_not_offered_or_not_allowed_is_refused() {
    let dir = TestDir::new("refusals");
    let mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    let table: &[(&[u8], u16, &str)] = &[
        (b"MAIL FROM:<a@example.test> BODY=BINARYMIME", 555, "5.5.4"),
        (b"MAIL FROM:<a@example.test> REQUIRETLS", 555, "5.5.4"),
        (b"MAIL FROM:<a@example.test> MT-PRIORITY=3", 555, "5.5.4"),
        (b"MAIL FROM:<a@example.test> SIZE=10 SIZE=20", 501, "5.5.4"),
        (b"MAIL FROM:<\xffa@example.test> SMTPUTF8", 501, "5.1.7"),
        (b"STARTTLS now", 501, "5.5.4"),
        (b"EHLO bad\rname", 501, "5.5.2"),
    ];
    for (line, code, enhanced) in table {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"\r\n");
        smtp.send(&bytes);
        let r = smtp.read_reply();
        assert_eq!(
            (r.code, r.enhanced()),
            (*code, enhanced.to_string()),
            "{}: {r:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(smtp.cmd("MAIL FROM:<a@example.test> SMTPUTF8").code, 250);
    for (line, code, enhanced) in [
        (
            &b"RCPT TO:<alice@example.test> NOTIFY=NEVER,SUCCESS"[..],
            501,
            "5.5.4",
        ),
        (b"RCPT TO:<\xffb@example.test>", 501, "5.1.3"),
    ] {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(b"\r\n");
        smtp.send(&bytes);
        let r = smtp.read_reply();
        assert_eq!(
            (r.code, r.enhanced()),
            (code, enhanced.to_string()),
            "{}: {r:?}",
            String::from_utf8_lossy(line)
        );
    }
    // None of these counted as more than one error each: the session is still open.
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    smtp.quit();
}

#[test]
fn postmaster_without_a_domain_is_accepted_and_every_domain_has_one() {
    let dir = TestDir::new("postmaster");
    let mta = Mta::start(
        &dir,
        "[organization]\naccepted_domains = [\"example.test\", \"other.test\"]\nmailboxes = [\"alice\"]\n",
        &[],
    );
    for rcpt in [
        "<Postmaster>",
        "<postmaster@example.test>",
        "<POSTMASTER@other.test>",
    ] {
        let mut smtp = Smtp::ehlo(mta.frontend);
        assert_eq!(smtp.cmd("MAIL FROM:<a@elsewhere.test>").code, 250);
        let r = smtp.cmd(&format!("RCPT TO:{rcpt}"));
        assert_eq!(r.code, 250, "{rcpt}: {r:?}");
        assert_eq!(smtp.cmd("DATA").code, 354);
        smtp.send(format!("Subject: to {rcpt}\r\n\r\nhi\r\n.\r\n").as_bytes());
        assert_eq!(smtp.read_reply().code, 250);
        smtp.quit();
    }
    assert!(
        wait_until(WAIT, || mta.maildir("postmaster").len() == 3),
        "{}",
        mta.log()
    );
}

#[test]
fn received_fields_name_the_queue_id_and_the_protocol() {
    let dir = TestDir::new("received");
    let mta = Mta::start(&dir, "", &[]);
    let mut smtp = Smtp::ehlo(mta.transport);
    assert_eq!(smtp.cmd("MAIL FROM:<a@example.test> SMTPUTF8").code, 250);
    assert_eq!(smtp.cmd("RCPT TO:<alice@example.test>").code, 250);
    assert_eq!(smtp.cmd("DATA").code, 354);
    smtp.send(b"Subject: trace\r\n\r\nhi\r\n.\r\n");
    let r = smtp.read_reply();
    assert_eq!(r.code, 250, "{r:?}");
    smtp.quit();
    let id = r
        .text()
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(id, _)| id.to_string())
        .expect("the queue id in the reply");
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1));
    let stored = &mta.maildir("alice")[0];
    assert!(
        stored.contains(&format!("with UTF8SMTP id {id}")),
        "Transport's Received names the queue id: {stored}"
    );
    assert!(
        stored.contains("Delivered-To: alice@example.test"),
        "{stored}"
    );
    // Over TLS, through the Front End.
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.sendmail('a@elsewhere.test', ['bob@example.test'], 'Subject: tls\r\n\r\nhi\r\n')
s.quit()
"#,
        port = mta.frontend
    ));
    assert!(wait_until(WAIT, || mta.maildir("bob").len() == 1));
    assert!(
        mta.maildir("bob")[0].contains("with ESMTPS id "),
        "{}",
        mta.maildir("bob")[0]
    );
}

#[test]
fn authenticated_submissions_get_date_and_message_id() {
    let dir = TestDir::new("submission-fields");
    let mta = Mta::start(
        &dir,
        "[[auth.users]]\nname = \"carol@example.test\"\npassword = \"s3cret\"\n",
        &[],
    );
    python(&format!(
        r#"
import smtplib, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', {port})
s.starttls(context=ctx)
s.login('carol@example.test', 's3cret')
s.sendmail('carol@example.test', ['alice@example.test'], 'Subject: bare\r\n\r\nno date, no id\r\n')
s.quit()
s = smtplib.SMTP('127.0.0.1', {port})
s.sendmail('x@elsewhere.test', ['bob@example.test'], 'Subject: anonymous\r\n\r\nleft alone\r\n')
s.quit()
"#,
        port = mta.frontend
    ));
    assert!(wait_until(WAIT, || mta.maildir("alice").len() == 1
        && mta.maildir("bob").len() == 1));
    let submitted = &mta.maildir("alice")[0];
    assert!(submitted.contains("\nDate: "), "{submitted}");
    assert!(submitted.contains("\nMessage-ID: <"), "{submitted}");
    let relayed = &mta.maildir("bob")[0];
    assert!(!relayed.contains("\nMessage-ID:"), "{relayed}");
}

/// Subject and expiry of a PEM certificate, as openssl reads them.
fn certificate(path: &std::path::Path) -> (String, String) {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-enddate", "-in"])
        .arg(path)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (field("subject="), field("notAfter="))
}

/// Whether openssl finds the certificate still valid `seconds` from now.
fn valid_in(path: &std::path::Path, seconds: u64) -> bool {
    std::process::Command::new("openssl")
        .args(["x509", "-noout", "-checkend", &seconds.to_string(), "-in"])
        .arg(path)
        .status()
        .expect("openssl")
        .success()
}

#[test]
fn the_generated_certificate_names_the_host_lasts_a_year_and_is_renewed() {
    let dir = TestDir::new("certificate");
    let mut mta = Mta::start(&dir, "hostname = \"mx.example.test\"\n", &[]);
    let cert = dir.path("mta-data/tls/cert.pem");
    let (subject, _) = certificate(&cert);
    assert!(
        subject.contains("CN = mx.example.test") || subject.contains("CN=mx.example.test"),
        "{subject}"
    );
    assert!(valid_in(&cert, 364 * 86400), "valid for a year");
    assert!(!valid_in(&cert, 366 * 86400), "and not for more");
    let mut previous = std::fs::read(&cert).unwrap();
    // Restarted with its certificate about to expire (or of an older version, with no known
    // expiry): a new one is generated.
    for case in ["expiring", "unknown"] {
        mta.stop();
        let expires = dir.path("mta-data/tls/cert.expires");
        if case == "expiring" {
            let soon = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 60;
            std::fs::write(&expires, soon.to_string()).unwrap();
        } else {
            std::fs::remove_file(&expires).unwrap();
        }
        mta.spawn(&[]);
        let renewed = std::fs::read(&cert).unwrap();
        assert_ne!(renewed, previous, "{case}: renewed");
        assert!(valid_in(&cert, 364 * 86400), "{case}");
        previous = renewed;
    }
    // A certificate that is not due is kept across restarts.
    let kept = std::fs::read(&cert).unwrap();
    mta.stop();
    mta.spawn(&[]);
    assert_eq!(std::fs::read(&cert).unwrap(), kept);
}
