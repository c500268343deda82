//! The `GET /metrics` endpoint: a minimal HTTP/1.1 responder, because one route does not need
//! a web framework. One request per connection (`Connection: close`); the request head is read
//! with a size cap and a deadline, parsed with `httparse`, and answered: the metrics for
//! `GET /metrics`, 405 for another method there, 404 for any other path, 400 for what is not
//! HTTP. It listens on a loopback address by default; who may scrape is the operator's network
//! policy, as with any exporter.

use super::Sources;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The largest request head read; a scraper's is a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// The time a client has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Scrapes served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 8;

/// The Prometheus text format, as prometheus-client writes it (OpenMetrics, which Prometheus
/// asks for first).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `[metrics] listen`, if set: with the SMTP listeners, before privileges are dropped,
/// so a port in use stops the start-up.
pub fn bind(config: &crate::config::HostConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(listen) = &config.metrics.listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("the metrics endpoint cannot listen on {listen}"))?;
    Ok(Some(listener))
}

/// Serves scrapes until `shutdown` turns true.
pub async fn serve(
    listener: std::net::TcpListener,
    sources: Arc<Sources>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(message = "The metrics endpoint cannot listen.", error = %e);
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(message = "Metrics endpoint: accept failed.", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let sources = Arc::clone(&sources);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(stream, sources)).await;
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    WrongMethod,
    NotFound,
    BadRequest,
    /// The head is not complete yet.
    Partial,
}

/// Routes a request head.
fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Route::Partial,
        Err(_) => return Route::BadRequest,
    }
    let path = request.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    match (request.method, path) {
        (Some("GET"), "/metrics") => Route::Metrics,
        (_, "/metrics") => Route::WrongMethod,
        _ => Route::NotFound,
    }
}

async fn answer(mut stream: TcpStream, sources: Arc<Sources>) {
    let mut head = Vec::with_capacity(512);
    let route = loop {
        if head.len() >= MAX_REQUEST {
            break Route::BadRequest;
        }
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        head.extend_from_slice(&chunk[..n]);
        match route(&head) {
            Route::Partial => continue,
            done => break done,
        }
    };
    let (status, content_type, body) = match route {
        Route::Metrics => {
            // Listing queue directories is file I/O: off the async threads.
            let text = tokio::task::spawn_blocking(move || super::global().scrape(&sources))
                .await
                .unwrap_or_default();
            ("200 OK", CONTENT_TYPE, text)
        }
        Route::WrongMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "Only GET /metrics is served.\n".to_string(),
        ),
        Route::NotFound | Route::Partial => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "Not found: the metrics are at /metrics.\n".to_string(),
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "Bad request.\n".to_string(),
        ),
    };
    let allow = if route == Route::WrongMethod {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed() {
        let cases: [(&[u8], Route); 7] = [
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Route::Metrics),
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", Route::Metrics),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::WrongMethod),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metrics HTTP/1.1\r\nHost", Route::Partial),
            (b"\x16\x03\x01 hello\r\n\r\n", Route::BadRequest),
        ];
        for (head, expected) in cases {
            assert_eq!(route(head), expected, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
