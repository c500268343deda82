//! The session's protocol rules in tables, with no socket: bytes in, replies and effects out.

use super::*;
use crate::message::parameters::Notify;
use crate::smtp::receive::Permissions;
use proptest::prelude::*;

/// Takes mailboxes of example.test, and anything when the client may relay.
struct Policy;

impl RecipientPolicy for Policy {
    fn check(&self, address: &str, may_relay: bool) -> Result<(), SmtpResponse> {
        if may_relay || address.to_ascii_lowercase().ends_with("@example.test") {
            Ok(())
        } else {
            Err(reply(550, "5.7.1", "Relaying denied"))
        }
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        service: Service::Transport,
        hostname: "mx.test".into(),
        lmtp: false,
        max_message_size: 10_000,
        max_recipients: 3,
        max_errors: 10,
        permissions: Permissions {
            anonymous: true,
            users: true,
            servers: true,
        },
        trusted: vec!["10.0.0.0/8".parse().unwrap()],
        xclient_hosts: vec!["10.9.9.9".parse().unwrap()],
        starttls: false,
        auth: true,
        auth_requires_tls: false,
        postmaster: "postmaster@example.test".into(),
        spool: None,
    }
}

/// Runs a session over `input` (fed in pieces of `chunk` bytes), answering every effect as a
/// Transport with no agents would; what it wrote, the messages it took, the events raised.
struct Run {
    output: String,
    messages: Vec<MailItem>,
    events: Vec<(Event, Vec<(&'static str, String)>)>,
    closed: Option<DisconnectReason>,
}

fn drive(config: SessionConfig, events: EventSet, peer: &str, input: &[u8], chunk: usize) -> Run {
    drive_spooling(config, events, peer, input, chunk, false)
}

/// [`drive`], with spool writes into real spool files (failing when `spool_fails`).
fn drive_spooling(
    config: SessionConfig,
    events: EventSet,
    peer: &str,
    input: &[u8],
    chunk: usize,
    spool_fails: bool,
) -> Run {
    let place = crate::message::body::SpoolPlace::anonymous(&std::env::temp_dir());
    let mut spool: Option<crate::message::body::SpoolWriter> = None;
    let peer: SocketAddr = peer.parse().unwrap();
    let mut session = Session::new(
        Arc::new(config),
        Arc::new(Policy),
        events,
        peer,
        "127.0.0.1:25".parse().unwrap(),
    );
    let mut run = Run {
        output: String::new(),
        messages: Vec::new(),
        events: Vec::new(),
        closed: None,
    };
    let mut fed = 0;
    loop {
        match session.step() {
            Step::Read => {
                run.output
                    .push_str(&String::from_utf8_lossy(&session.take_output()));
                if fed >= input.len() {
                    session.input_closed();
                    continue;
                }
                let end = (fed + chunk).min(input.len());
                session.receive(&input[fed..end]);
                fed = end;
            }
            Step::Close(reason) => {
                run.output
                    .push_str(&String::from_utf8_lossy(&session.take_output()));
                run.closed = Some(reason);
                return run;
            }
            Step::Effect(effect) => match effect {
                Effect::Raise(request) => {
                    run.events.push((request.event, request.args));
                    session.agents_done(Raised {
                        item: request.item,
                        ..Raised::default()
                    });
                }
                Effect::StartTls => session.tls_done(false),
                Effect::Authenticate { user, password } => {
                    session.auth_done(if user == "u" && password == "p" {
                        crate::auth::Outcome::Valid
                    } else {
                        crate::auth::Outcome::Invalid
                    })
                }
                Effect::Mail(_) => session.mail_done(Ok("Q1".into())),
                Effect::Rcpt(_) => session.rcpt_done(Ok(())),
                Effect::Data => session.data_done(Ok(())),
                Effect::Message(item) => {
                    let n = if session.config().lmtp {
                        item.envelope.recipients.len()
                    } else {
                        1
                    };
                    run.messages.push(*item);
                    session.message_done(vec![reply(250, "2.0.0", "OK"); n]);
                }
                Effect::Reset => {
                    spool = None;
                    session.reset_done()
                }
                Effect::Spool(piece) => {
                    if spool_fails {
                        session.spool_done(Err(std::io::Error::from_raw_os_error(28)));
                        continue;
                    }
                    let mut writer = spool.take().unwrap_or_else(|| {
                        crate::message::body::SpoolWriter::create(&place).unwrap()
                    });
                    match piece {
                        SpoolChunk::Write(bytes) => {
                            writer.write(&bytes).unwrap();
                            spool = Some(writer);
                            session.spool_done(Ok(None));
                        }
                        SpoolChunk::Finish(bytes) => {
                            writer.write(&bytes).unwrap();
                            session.spool_done(Ok(Some(writer.finish().unwrap())));
                        }
                    }
                }
            },
        }
    }
}

fn transport(input: &str) -> Run {
    drive(
        config(),
        EventSet::EMPTY,
        "192.0.2.1:4000",
        input.as_bytes(),
        1 << 20,
    )
}

/// The reply codes of an output, one per reply (multi-line replies count once).
fn codes(output: &str) -> Vec<u16> {
    output
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .filter_map(|l| l[..3].parse().ok())
        .collect()
}

#[test]
fn commands_are_answered_in_sequence() {
    let table: &[(&str, &[u16])] = &[
        ("MAIL FROM:<a@b.test>\r\n", &[220, 503]),
        ("EHLO c\r\nRCPT TO:<x@example.test>\r\n", &[220, 250, 503]),
        ("EHLO c\r\nDATA\r\n", &[220, 250, 503]),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n",
            &[220, 250, 250, 554],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n",
            &[220, 250, 250, 503],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRSET\r\nRCPT TO:<x@example.test>\r\n",
            &[220, 250, 250, 250, 503],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<x@example.test>\r\n",
            &[220, 250, 250, 250, 503],
        ),
        (
            "HELO c\r\nNOOP\r\nHELP\r\nVRFY x\r\nQUIT\r\n",
            &[220, 250, 250, 214, 252, 221],
        ),
        ("EHLO c\r\nRCPT TO:<x@far.test>\r\n", &[220, 250, 503]),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\n",
            &[220, 250, 250, 550],
        ),
        (
            "EHLO c\r\nBDAT 10 LAST\r\nEXPN x\r\nETRN x\r\nLHLO c\r\n",
            &[220, 250, 502, 502, 502, 500],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b.test> SIZE=20000\r\n",
            &[220, 250, 552],
        ),
        (
            "EHLO c\r\nMAIL FROM:<caf\u{e9}@b.test>\r\n",
            &[220, 250, 553],
        ),
        (
            "EHLO c\r\nMAIL FROM:<caf\u{e9}@b.test> SMTPUTF8\r\n",
            &[220, 250, 250],
        ),
    ];
    for (input, expected) in table {
        let run = transport(input);
        assert_eq!(codes(&run.output), *expected, "{input:?}:\n{}", run.output);
    }
}

#[test]
fn pipelined_commands_are_answered_in_one_write_in_order() {
    let input = "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@far.test>\r\nDATA\r\n";
    let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let mut session = Session::new(
        Arc::new(config()),
        Arc::new(Policy),
        EventSet::EMPTY,
        peer,
        peer,
    );
    session.receive(input.as_bytes());
    // Every effect is answered at once; the first Read comes only once all input is used.
    loop {
        match session.step() {
            Step::Read => break,
            Step::Effect(Effect::Mail(_)) => session.mail_done(Ok("Q".into())),
            Step::Effect(Effect::Rcpt(_)) => session.rcpt_done(Ok(())),
            Step::Effect(Effect::Data) => session.data_done(Ok(())),
            other => panic!("{other:?}"),
        }
    }
    let output = String::from_utf8(session.take_output()).unwrap();
    assert_eq!(codes(&output), [220, 250, 250, 250, 550, 354]);
}

#[test]
fn a_recipient_limit_is_not_a_protocol_error() {
    let mut input = "EHLO c\r\nMAIL FROM:<a@b.test>\r\n".to_string();
    for i in 0..15 {
        input.push_str(&format!("RCPT TO:<r{i}@example.test>\r\n"));
    }
    input.push_str("DATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let run = transport(&input);
    let c = codes(&run.output);
    assert_eq!(
        c.iter().filter(|c| **c == 250).count(),
        2 + 3 + 1,
        "{}",
        run.output
    );
    assert_eq!(c.iter().filter(|c| **c == 452).count(), 12);
    assert!(!c.contains(&421), "{}", run.output);
    assert_eq!(run.messages.len(), 1);
    assert_eq!(run.messages[0].envelope.recipients.len(), 3);
    assert_eq!(run.closed, Some(DisconnectReason::Quit));
}

#[test]
fn too_many_errors_close_the_session() {
    let run = transport(&"FOO\r\n".repeat(12));
    let c = codes(&run.output);
    assert_eq!(c.iter().filter(|c| **c == 500).count(), 10);
    assert_eq!(c.last(), Some(&421));
    assert_eq!(run.closed, Some(DisconnectReason::TooManyErrors));
}

#[test]
fn command_lines_are_framed_strictly() {
    let long = format!("NOOP {}\r\n", "x".repeat(5000));
    let table: &[(&[u8], &[u16])] = &[
        (b"EHLO c\n", &[220, 500]),
        (long.as_bytes(), &[220, 500]),
        (b"EHLO a\rb\r\n", &[220, 501]),
        (b"EHLO a\x00b\r\n", &[220, 501]),
        (b"MAIL FROM:<\xff@b.test>\r\n", &[220, 501]),
        (b"NOOP \xff\r\n", &[220, 500]),
        (b"STARTTLS x\r\n", &[220, 501]),
    ];
    for (input, expected) in table {
        let run = drive(config(), EventSet::EMPTY, "192.0.2.1:4000", input, 7);
        assert_eq!(
            codes(&run.output),
            *expected,
            "{:?}:\n{}",
            String::from_utf8_lossy(input),
            run.output
        );
    }
    // An over-long line is skipped to its end, and the session goes on.
    let run = transport(&format!("{long}NOOP\r\n"));
    assert_eq!(codes(&run.output), [220, 500, 250]);
}

#[test]
fn only_crlf_dot_crlf_ends_data_and_one_data_is_one_message() {
    let variants: &[&[u8]] = &[b".\r\r\n", b".\r\r\r\n", b".\n", b"\n.\r\n", b".\r"];
    for variant in variants {
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: s\r\n\r\nfirst\r\n".to_vec();
        input.extend_from_slice(variant);
        input.extend_from_slice(b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\nforged\r\n.\r\nQUIT\r\n");
        for chunk in [1, 3, 1000] {
            let run = drive(config(), EventSet::EMPTY, "192.0.2.1:4000", &input, chunk);
            assert_eq!(run.messages.len(), 1, "{variant:?}:\n{}", run.output);
            assert_eq!(
                codes(&run.output),
                [220, 250, 250, 250, 354, 250, 221],
                "{variant:?}"
            );
            let body = run.messages[0].message.body().to_vec().unwrap();
            assert!(String::from_utf8_lossy(&body).contains("forged"));
        }
    }
}

#[test]
fn what_can_be_known_in_the_session_is_refused_in_the_session() {
    let mut loop_input =
        "EHLO c\r\nMAIL FROM:<v@far.test> RET=FULL\r\nRCPT TO:<x@example.test>\r\nDATA\r\n"
            .to_string();
    for i in 0..21 {
        loop_input.push_str(&format!("Received: from h{i}\r\n"));
    }
    loop_input.push_str("\r\nbody\r\n.\r\n");
    let run = transport(&loop_input);
    assert_eq!(codes(&run.output).last(), Some(&554), "{}", run.output);
    assert!(run.output.contains("5.4.6"));
    assert!(run.messages.is_empty());
    let big = format!(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n{}\r\n.\r\n",
        "y".repeat(20_000)
    );
    let run = transport(&big);
    assert_eq!(codes(&run.output).last(), Some(&552), "{}", run.output);
    assert!(run.messages.is_empty());
}

#[test]
fn envelope_values_reach_the_message_decoded() {
    let run = transport("EHLO c\r\nMAIL FROM:<a@b.test> RET=HDRS ENVID=e+2B1\r\nRCPT TO:<Postmaster> NOTIFY=FAILURE ORCPT=rfc822;p+2Bq@example.test\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n");
    let item = &run.messages[0];
    assert_eq!(item.id, "Q1");
    assert_eq!(item.envelope.envid.as_deref(), Some("e+1"));
    let r = &item.envelope.recipients[0];
    assert_eq!(r.address, "postmaster@example.test");
    assert_eq!(r.notify, Some(Notify::parse("FAILURE").unwrap()));
    assert_eq!(r.orcpt.as_ref().unwrap().address, "p+q@example.test");
    let received = item.message.header("Received").unwrap();
    assert!(
        received.starts_with(
            "from c ([192.0.2.1]) by mx.test with ESMTP id Q1 for <postmaster@example.test>;"
        ),
        "{received}"
    );
    assert!(!item.trace.vouched, "an anonymous client");
}

#[test]
fn a_trusted_or_authenticated_client_is_vouched_for() {
    let trusted = drive(
        config(),
        EventSet::EMPTY,
        "10.1.2.3:4000",
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nx\r\n.\r\n",
        100,
    );
    assert!(trusted.messages[0].trace.vouched, "{}", trusted.output);
    let auth = transport("EHLO c\r\nAUTH PLAIN AHUAcA==\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&auth.output),
        [220, 250, 235, 250, 250, 354, 250],
        "{}",
        auth.output
    );
    let item = &auth.messages[0];
    assert!(item.trace.vouched);
    assert!(
        item.message.header("Date").is_some(),
        "a submission gets a Date"
    );
    assert!(item
        .message
        .header("Message-ID")
        .unwrap()
        .ends_with("@mx.test>"));
    assert!(item
        .message
        .header("Received")
        .unwrap()
        .contains("with ESMTPA"));
    let bad = transport("EHLO c\r\nAUTH PLAIN AHUAeA==\r\nAUTH LOGIN\r\ndQ==\r\ncA==\r\n");
    assert_eq!(
        codes(&bad.output),
        [220, 250, 535, 334, 334, 235],
        "{}",
        bad.output
    );
}

#[test]
fn lmtp_answers_each_recipient_after_the_data() {
    let mut c = config();
    c.lmtp = true;
    let run = drive(c, EventSet::EMPTY, "127.0.0.1:4000", b"LHLO t\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@example.test>\r\nDATA\r\nx\r\n.\r\nEHLO t\r\n", 100);
    assert_eq!(
        codes(&run.output),
        [220, 250, 250, 250, 250, 354, 250, 250, 500],
        "{}",
        run.output
    );
    assert!(run.output.starts_with("220 mx.test LMTP"));
}

#[test]
fn a_front_end_names_its_client_and_agents_see_one_connect() {
    let all = Event::ALL.into_iter().collect::<EventSet>();
    let input = b"XCLIENT ADDR=198.51.100.7 PORT=5555 HELO=client.test LOGIN=carol TRUSTED=NO\r\nEHLO fe.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nx\r\n.\r\n";
    let run = drive(config(), all, "10.9.9.9:1000", input, 1000);
    assert_eq!(
        codes(&run.output),
        [220, 220, 250, 250, 250, 354, 250],
        "{}",
        run.output
    );
    let connects: Vec<_> = run
        .events
        .iter()
        .filter(|(e, _)| *e == Event::OnConnect)
        .collect();
    assert_eq!(connects.len(), 1);
    let ehlo = run
        .events
        .iter()
        .find(|(e, _)| *e == Event::OnEhloCommand)
        .unwrap();
    assert_eq!(ehlo.1, vec![("domain", "client.test".to_string())]);
    // LOGIN makes the client an authenticated one: it may relay, and is vouched for.
    assert!(run.messages[0].trace.vouched);
    // Anyone else is refused XCLIENT; a Front End node that does not use it still gets its
    // OnConnect and OnEhloCommand, just later.
    let run = drive(
        config(),
        all,
        "192.0.2.1:1000",
        b"EHLO c\r\nXCLIENT ADDR=1.2.3.4\r\n",
        1000,
    );
    assert_eq!(codes(&run.output), [220, 250, 502], "{}", run.output);
    let run = drive(config(), all, "10.9.9.9:1000", b"EHLO fe\r\nNOOP\r\n", 1000);
    let names: Vec<Event> = run.events.iter().map(|(e, _)| *e).collect();
    assert_eq!(
        &names[..3],
        [Event::OnConnect, Event::OnEhloCommand, Event::OnNoopCommand]
    );
    assert!(
        run.output.contains("XCLIENT"),
        "offered to a Front End node"
    );
    // XCLIENT after EHLO, as Postfix's clients send it: the session starts over.
    let run = drive(
        config(),
        all,
        "10.9.9.9:1000",
        b"EHLO fe\r\nXCLIENT ADDR=198.51.100.7\r\nEHLO fe\r\n",
        1000,
    );
    assert_eq!(codes(&run.output), [220, 250, 220, 250], "{}", run.output);
    let connects = run
        .events
        .iter()
        .filter(|(e, _)| *e == Event::OnConnect)
        .count();
    assert_eq!(connects, 2);
}

#[test]
fn events_carry_their_arguments() {
    let all = Event::ALL.into_iter().collect::<EventSet>();
    let run = drive(config(), all, "192.0.2.1:4000", b"EHLO c\r\nMAIL FROM:<a@b.test> BODY=8BITMIME\r\nRCPT TO:<x@example.test> NOTIFY=DELAY\r\nRCPT TO:<y@far.test>\r\nQUIT\r\n", 1000);
    let names: Vec<Event> = run.events.iter().map(|(e, _)| *e).collect();
    // The relay attempt is raised too: the recipient is checked after the agents, which may
    // put another address in its place.
    assert_eq!(
        names,
        [
            Event::OnConnect,
            Event::OnEhloCommand,
            Event::OnMailCommand,
            Event::OnRcptCommand,
            Event::OnRcptCommand,
            Event::OnReject,
        ]
    );
    let mail = &run.events[2].1;
    assert!(mail.contains(&("body", "8BITMIME".to_string())));
    let rcpt = &run.events[3].1;
    assert!(rcpt.contains(&("notify", "DELAY".to_string())));
}

/// Dot-stuffs like a client.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::smtp::data::dot_stuff(body, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// The fuzz invariant: one DATA in, at most one message out, and its body is exactly the
    /// body sent, whatever the body and whatever follows it.
    #[test]
    fn one_data_is_at_most_one_message_with_the_body_sent(
        body in proptest::collection::vec(prop_oneof![
            Just(b'\r'), Just(b'\n'), Just(b'.'), Just(0u8), any::<u8>()
        ], 0..200),
        trailer in proptest::collection::vec(any::<u8>(), 0..100),
        chunk in 1usize..50,
    ) {
        let mut body = body;
        body.extend_from_slice(b"\r\n");
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: p\r\n\r\n".to_vec();
        input.extend_from_slice(&stuff(&body));
        input.extend_from_slice(&trailer);
        let run = drive(config(), EventSet::EMPTY, "192.0.2.1:4000", &input, chunk);
        prop_assert!(!run.messages.is_empty());
        prop_assert_eq!(run.messages[0].message.body().to_vec().unwrap(), body.clone());
        // The same with the body spooled past a few bytes, in pieces of that size.
        let tiny = SessionConfig { spool: Some(1 + chunk % 17), ..config() };
        let spooled = drive_spooling(tiny, EventSet::EMPTY, "192.0.2.1:4000", &input, chunk, false);
        prop_assert_eq!(&spooled.output, &run.output);
        prop_assert!(body.len() <= 20 || spooled.messages[0].message.body().is_spooled());
        prop_assert_eq!(spooled.messages[0].message.to_vec().unwrap(), run.messages[0].message.to_vec().unwrap());
        let data_accepted = run.output.matches("354 ").count();
        prop_assert!(run.messages.len() <= data_accepted);
    }

    /// Arbitrary input never panics and never yields more messages than DATA commands
    /// accepted.
    #[test]
    fn arbitrary_input_never_breaks_the_session(
        input in proptest::collection::vec(prop_oneof![
            Just(b"EHLO c\r\n".to_vec()), Just(b"MAIL FROM:<a@b.test>\r\n".to_vec()),
            Just(b"RCPT TO:<x@example.test>\r\n".to_vec()), Just(b"DATA\r\n".to_vec()),
            Just(b"\r\n.\r\n".to_vec()), Just(b"RSET\r\n".to_vec()), Just(b".".to_vec()),
            Just(b"AUTH LOGIN\r\n".to_vec()), Just(b"XCLIENT ADDR=1.2.3.4\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..30),
        ], 0..30),
        chunk in 1usize..40,
    ) {
        let input = input.concat();
        let run = drive(config(), Event::ALL.into_iter().collect(), "10.9.9.9:1", &input, chunk);
        prop_assert!(run.messages.len() <= run.output.matches("354 ").count());
        prop_assert!(run.closed.is_some());
    }
}

fn spooling() -> SessionConfig {
    SessionConfig {
        max_message_size: 4 << 20,
        spool: Some(crate::message::body::SPOOL_THRESHOLD),
        ..config()
    }
}

#[test]
fn a_large_body_goes_to_the_spool_and_arrives_whole() {
    let line = "0123456789".repeat(9) + "\r\n";
    let body = line.repeat(3000).into_bytes(); // 276 KB, past the threshold
    let mut input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: big\r\n\r\n".to_vec();
    input.extend_from_slice(&stuff(&body));
    input.extend_from_slice(b"QUIT\r\n");
    for chunk in [1000, 70_000, 1 << 20] {
        let run = drive_spooling(
            spooling(),
            EventSet::EMPTY,
            "192.0.2.1:4000",
            &input,
            chunk,
            false,
        );
        assert_eq!(
            codes(&run.output),
            [220, 250, 250, 250, 354, 250, 221],
            "{}",
            run.output
        );
        let message = &run.messages[0].message;
        assert!(message.body().is_spooled(), "chunk {chunk}");
        assert_eq!(message.header("subject").as_deref(), Some("big"));
        assert_eq!(message.body().to_vec().unwrap(), body, "chunk {chunk}");
    }
    // A small message stays in memory.
    let run = transport_with(spooling(), "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: s\r\n\r\nx\r\n.\r\nQUIT\r\n");
    assert!(!run.messages[0].message.body().is_spooled());
}

#[test]
fn a_spool_that_fails_or_a_header_block_too_large_refuses_the_message() {
    let body = "x".repeat(100).repeat(3000) + "\r\n";
    let input = format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\nSubject: big\r\n\r\n{body}.\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n");
    let run = drive_spooling(
        spooling(),
        EventSet::EMPTY,
        "192.0.2.1:4000",
        input.as_bytes(),
        1 << 20,
        true,
    );
    assert!(run.messages.is_empty());
    assert!(run.output.contains("452 4.3.1"), "{}", run.output);
    assert_eq!(
        codes(&run.output)[5..],
        [452, 250, 221],
        "the session goes on"
    );
    let headers = "X-Long: y\r\n".repeat(30_000);
    let input = format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n{headers}\r\nbody\r\n.\r\nQUIT\r\n");
    let run = transport_with(spooling(), &input);
    assert!(run.messages.is_empty());
    assert!(
        run.output.contains("552 5.3.4 Message header size"),
        "{}",
        run.output
    );
}

fn transport_with(config: SessionConfig, input: &str) -> Run {
    drive(
        config,
        EventSet::EMPTY,
        "192.0.2.1:4000",
        input.as_bytes(),
        1 << 20,
    )
}

/// Drives one transaction whose OnRcptCommand agents answer with `agents(recipient)`; the last
/// reply, and the recipients the transaction holds at the end.
fn rcpt_with_agents(
    peer: &str,
    rcpt: &str,
    agents: impl Fn(&str) -> Vec<Action>,
) -> (String, Vec<EnvelopeRecipientView>) {
    let mut session = Session::new(
        Arc::new(config()),
        Arc::new(Policy),
        [Event::OnRcptCommand].into_iter().collect(),
        peer.parse().unwrap(),
        "127.0.0.1:25".parse().unwrap(),
    );
    let mut input = format!("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<{rcpt}>\r\n").into_bytes();
    let mut output = String::new();
    let mut accepted = Vec::new();
    let mut raised = Vec::new();
    loop {
        match session.step() {
            Step::Read => {
                output.push_str(&String::from_utf8_lossy(&session.take_output()));
                if input.is_empty() {
                    break;
                }
                session.receive(&std::mem::take(&mut input));
            }
            Step::Effect(Effect::Raise(request)) => {
                let recipient = request
                    .args
                    .iter()
                    .find(|(n, _)| *n == "recipient")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                raised.push(recipient.clone());
                session.agents_done(Raised {
                    actions: agents(&recipient),
                    item: request.item,
                    ..Raised::default()
                });
            }
            Step::Effect(Effect::Mail(_)) => session.mail_done(Ok("Q1".into())),
            Step::Effect(Effect::Rcpt(r)) => {
                accepted.push(EnvelopeRecipientView {
                    address: r.address.clone(),
                    orcpt: r
                        .orcpt
                        .as_ref()
                        .map(|o| format!("{};{}", o.addr_type, o.address)),
                });
                session.rcpt_done(Ok(()))
            }
            Step::Effect(Effect::Reset) => session.reset_done(),
            Step::Effect(other) => panic!("unexpected {other:?}"),
            Step::Close(_) => break,
        }
    }
    assert_eq!(
        raised,
        [rcpt.to_string()],
        "OnRcptCommand sees what the client sent"
    );
    let last = output
        .trim_end()
        .rsplit("\r\n")
        .next()
        .unwrap_or("")
        .to_string();
    (last, accepted)
}

/// A recipient as the sink got it.
#[derive(Debug, PartialEq)]
struct EnvelopeRecipientView {
    address: String,
    orcpt: Option<String>,
}

#[test]
fn the_recipient_check_applies_to_what_the_rcpt_agents_leave() {
    let set = |to: &'static str| move |_: &str| vec![Action::SetRecipient(to.to_string())];
    let nothing = |_: &str| Vec::new();
    let reject = |_: &str| vec![Action::Reject(reply(450, "4.7.1", "agent says later"))];
    let anonymous = "192.0.2.1:4000";
    let trusted = "10.1.1.1:4000";

    // An address no one takes, rewritten to a mailbox of ours: accepted, the original kept
    // as ORCPT for reports.
    let (last, got) = rcpt_with_agents(anonymous, "x@far.test", set("alice@example.test"));
    assert!(last.starts_with("250 2.1.5"), "{last}");
    assert_eq!(
        got,
        [EnvelopeRecipientView {
            address: "alice@example.test".into(),
            orcpt: Some("rfc822;x@far.test".into())
        }]
    );
    // A local address rewritten to a remote one: the relay rule applies to the new address.
    let (last, got) = rcpt_with_agents(anonymous, "sales@example.test", set("bob@far.test"));
    assert!(last.starts_with("550 5.7.1"), "{last}");
    assert!(got.is_empty());
    let (last, got) = rcpt_with_agents(trusted, "sales@example.test", set("bob@far.test"));
    assert!(last.starts_with("250 2.1.5"), "{last}");
    assert_eq!(got[0].address, "bob@far.test");
    // No agent action: the host's own verdict, as before.
    let (last, _) = rcpt_with_agents(anonymous, "y@far.test", nothing);
    assert!(last.starts_with("550 5.7.1 Relaying denied"), "{last}");
    // An agent's reject stands, whatever the host would have said.
    let (last, got) = rcpt_with_agents(anonymous, "y@far.test", reject);
    assert_eq!(last, "450 4.7.1 agent says later");
    assert!(got.is_empty());
    // Non-ASCII from an agent in a transaction without SMTPUTF8.
    let (last, _) = rcpt_with_agents(anonymous, "x@example.test", set("jörg@example.test"));
    assert!(last.starts_with("553 5.6.7"), "{last}");
}
