//! The server's end of the control socket: one task per connection, one request each, and the
//! commands that change something carried out one at a time.

use super::{PipelineStatus, Request, Response, ServerStatus};
use crate::agents::AgentHost;
use crate::service::Service;
use crate::transport::Transport;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

/// The longest request line taken (a filter or an address: small).
const MAX_REQUEST: u64 = 64 * 1024;

/// What the control socket serves: the running services.
pub struct Control {
    /// The running server's status, less what changes (filled in per request).
    pub status: ServerStatus,
    /// Each service's agents.
    pub agents: HashMap<Service, Arc<AgentHost>>,
    /// The Transport service, when this process runs it.
    pub transport: Option<Arc<Transport>>,
    /// The host configuration's reloads.
    pub reconfiguration: Arc<crate::reconfiguration::Reconfiguration>,
    /// Commands that change something run one at a time.
    changes: tokio::sync::Mutex<()>,
}

impl Control {
    /// Serves `status` (its fixed part), `agents` and `transport`.
    pub fn new(
        status: ServerStatus,
        agents: HashMap<Service, Arc<AgentHost>>,
        transport: Option<Arc<Transport>>,
        reconfiguration: Arc<crate::reconfiguration::Reconfiguration>,
    ) -> Self {
        Self {
            status,
            agents,
            transport,
            reconfiguration,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    async fn status(&self) -> ServerStatus {
        let mut status = self.status.clone();
        let mut pipelines: Vec<PipelineStatus> = self
            .agents
            .values()
            .map(|host| {
                let pipeline = host.pipeline();
                PipelineStatus {
                    service: host.service().to_string(),
                    file: host.file().map(|p| {
                        std::path::absolute(p)
                            .unwrap_or_else(|_| p.to_path_buf())
                            .display()
                            .to_string()
                    }),
                    generation: pipeline.generation,
                    agents: pipeline.agents.len(),
                    last_error: host.last_error(),
                    quarantined: host.quarantined().into_iter().map(|(n, _)| n).collect(),
                }
            })
            .collect();
        pipelines.sort_by(|a, b| a.service.cmp(&b.service));
        status.pipelines = pipelines;
        status.configuration = self.reconfiguration.state();
        if let Some(transport) = &self.transport {
            status.queues = transport.queue_totals().await;
            status.back_pressure = Some(transport.sink.0.pressure.pressure());
        }
        status
    }

    /// Carries out one request; the response and the bytes that follow it.
    async fn handle(&self, request: Request) -> (Response, Vec<u8>) {
        let value = |v: serde_json::Result<serde_json::Value>| match v {
            Ok(result) => Response {
                ok: true,
                result,
                ..Response::default()
            },
            Err(e) => refused(format!("cannot encode the answer: {e}")),
        };
        let said = |outcome: Result<String, String>| match outcome {
            Ok(sentence) => Response {
                ok: true,
                result: serde_json::Value::String(sentence),
                ..Response::default()
            },
            Err(why) => refused(why),
        };
        if let Request::Status = request {
            return (value(serde_json::to_value(self.status().await)), Vec::new());
        }
        if let Request::Reload = request {
            let r = Arc::clone(&self.reconfiguration);
            let outcome = tokio::task::spawn_blocking(move || r.reload(true))
                .await
                .unwrap_or_else(|_| Err("the reload did not finish".into()));
            return (said(outcome), Vec::new());
        }
        let Some(transport) = &self.transport else {
            return (
                refused("this server does not run the Transport role, which keeps the queues"),
                Vec::new(),
            );
        };
        match request {
            Request::Status | Request::Reload => unreachable!("answered above"),
            Request::QueueList => (
                value(serde_json::to_value(transport.queue_list().await)),
                Vec::new(),
            ),
            Request::MessageList { filter } => (
                value(serde_json::to_value(transport.message_list(&filter).await)),
                Vec::new(),
            ),
            Request::MessageExport { id } => match transport.message_export(&id).await {
                Ok(bytes) => (
                    Response {
                        ok: true,
                        payload: bytes.len(),
                        ..Response::default()
                    },
                    bytes,
                ),
                Err(why) => (refused(why), Vec::new()),
            },
            change => {
                let _one_at_a_time = self.changes.lock().await;
                let outcome = match change {
                    Request::QueueRetry { queue } => transport.queue_retry(&queue).await,
                    Request::QueueSuspend { queue } => transport.queue_suspend(&queue, true),
                    Request::QueueResume { queue } => transport.queue_suspend(&queue, false),
                    Request::QueueResubmit { queue } if queue == "unreachable" => {
                        transport.resubmit_unreachable().await
                    }
                    Request::QueueResubmit { queue } => Err(format!(
                        "only the unreachable queue is resubmitted (not {queue})"
                    )),
                    Request::MessageSuspend { id } => transport.message_suspend(&id, true).await,
                    Request::MessageResume { id } => transport.message_suspend(&id, false).await,
                    Request::MessageRemove { id, ndr } => transport.message_remove(&id, ndr).await,
                    Request::MessageRelease { id } => transport.message_release(&id).await,
                    Request::MessageRedirect { id, to } => {
                        transport.message_redirect(&id, &to).await
                    }
                    _ => Err("not a change".into()),
                };
                // What the change tracked is in the log when the command returns, so that
                // `mta track` run next finds it (the writer gathers records for a moment).
                let _ = tokio::task::spawn_blocking(crate::tracking::flush).await;
                (said(outcome), Vec::new())
            }
        }
    }
}

fn refused(why: impl Into<String>) -> Response {
    Response {
        ok: false,
        error: Some(why.into()),
        ..Response::default()
    }
}

/// Answers requests on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: UnixListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let control = Arc::clone(&control);
                    tokio::spawn(async move { connection(stream, control).await });
                }
                Err(e) => {
                    tracing::warn!(message = "Control socket accept failed.", error = %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut stop => return,
        }
    }
}

async fn connection(stream: UnixStream, control: Arc<Control>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let (response, payload) = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => control.handle(request).await,
            Err(e) => (refused(format!("not a request: {e}")), Vec::new()),
        },
        Ok(Err(e)) => (refused(format!("unreadable request: {e}")), Vec::new()),
        Err(_) => (refused("no request within 10 s"), Vec::new()),
    };
    let response = Response {
        pid: std::process::id(),
        ..response
    };
    let Ok(mut out) = serde_json::to_vec(&response) else {
        return;
    };
    out.push(b'\n');
    let _ = write.write_all(&out).await;
    let _ = write.write_all(&payload).await;
    let _ = write.shutdown().await;
}
