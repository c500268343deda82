//! A load generator that behaves like a sending MTA: `sessions` concurrent SMTP sessions share
//! `messages` messages of `size` bytes; a message refused for now (4xx, such as back pressure's
//! 452 4.3.1 at MAIL) is sent again after a pause instead of being dropped (smtp-source gives
//! up at the first refusal). Prints one line: `accepted=N deferred=N seconds=S`.
//!
//!     cargo run --release --example smtp_load -- 127.0.0.1:2526 200 20000 5120 to@sink.test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Session = BufReader<TcpStream>;

async fn reply(s: &mut Session) -> std::io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

async fn command(s: &mut Session, line: &[u8]) -> std::io::Result<u16> {
    s.get_mut().write_all(line).await?;
    reply(s).await
}

async fn open(addr: &str) -> std::io::Result<Session> {
    let mut s = BufReader::new(TcpStream::connect(addr).await?);
    reply(&mut s).await?;
    command(&mut s, b"EHLO load.example\r\n").await?;
    Ok(s)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let addr = arg(0, "127.0.0.1:2526");
    let sessions: u64 = arg(1, "200").parse().expect("sessions");
    let messages: u64 = arg(2, "20000").parse().expect("messages");
    let size: usize = arg(3, "5120").parse().expect("size");
    let to = arg(4, "to@sink.test");
    let mut body = b"Subject: load\r\nFrom: load@example.net\r\n\r\n".to_vec();
    while body.len() < size {
        body.extend_from_slice(&[b'x'; 78]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let body = Arc::new(body);
    let rcpt = Arc::new(format!("RCPT TO:<{to}>\r\n").into_bytes());
    let (next, accepted, deferred) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (addr, body, rcpt) = (addr.clone(), Arc::clone(&body), Arc::clone(&rcpt));
        let (next, accepted, deferred) = (
            Arc::clone(&next),
            Arc::clone(&accepted),
            Arc::clone(&deferred),
        );
        tasks.push(tokio::spawn(async move {
            let mut session = None;
            let mut mine = next.fetch_add(1, Ordering::Relaxed);
            while mine < messages {
                let s = match session.as_mut() {
                    Some(s) => s,
                    None => match open(&addr).await {
                        Ok(s) => session.insert(s),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let sent = async {
                    if command(s, b"MAIL FROM:<load@example.net>\r\n").await? != 250 {
                        return Ok::<_, std::io::Error>(false);
                    }
                    if command(s, &rcpt).await? != 250 {
                        command(s, b"RSET\r\n").await?;
                        return Ok(false);
                    }
                    if command(s, b"DATA\r\n").await? != 354 {
                        return Ok(false);
                    }
                    Ok(command(s, &body).await? == 250)
                }
                .await;
                match sent {
                    Ok(true) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        mine = next.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {
                        // Refused for now: wait, then send it again (as a queue would).
                        deferred.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(_) => session = None,
                }
            }
            if let Some(mut s) = session {
                let _ = command(&mut s, b"QUIT\r\n").await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "accepted={} deferred={} seconds={:.3}",
        accepted.load(Ordering::Relaxed),
        deferred.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
