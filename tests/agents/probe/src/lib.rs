//! The probe: a test agent that records every SMTP receive event it sees in a log file, and
//! acts when its parameters say so. The host's end-to-end tests load it from disk.
//!
//! Parameters: `name` (default `probe`), `log` (file to append `name version event detail`
//! lines to), `stamp` (`true`: add `X-Probe-<name>: <version>` at OnEndOfHeaders), and actions
//! keyed by event name: `reject`, `panic`, `fail`, `disconnect`, `discard`, `quarantine`,
//! `sleep` (with `sleep_ms`), `submit` (at OnEndOfData, submit a new message to this address),
//! `reject_rcpt` (reject RCPT TO for this address only), `rewrite_rcpt` (`from=to`, may be
//! repeated: at OnRcptCommand, put `to` in place of the recipient `from`).
//!
//! Logging and async handlers, at OnMailCommand, OnRcptCommand and the commands without
//! arguments: `log_levels` (one line at each level), `flood` (`flood_lines` info lines, default
//! 1000), `async_sleep` (go async and complete after `sleep_ms` from the probe's timer thread;
//! a `reject` of the same event then rejects in the completion), `async_drop` (drop the async
//! context without completing), `async_never` (keep it and never complete).

use mta_agent_sdk::prelude::*;
use mta_agent_sdk::smtp_receive::{AsyncContext, Rejectable, SmtpEvent};
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs jobs at their time: the probe's own "runtime" for async completions,
/// so a thousand pending calls cost one thread.
struct Timer(Mutex<mpsc::Sender<(Instant, Job)>>);

impl Timer {
    fn start() -> Self {
        let (sender, receiver) = mpsc::channel::<(Instant, Job)>();
        // Named: an unnamed thread would inherit the name of the host's thread that started it.
        let spawned = std::thread::Builder::new()
            .name("probe-timer".into())
            .spawn(move || {
                let mut due: Vec<(Instant, Job)> = Vec::new();
                loop {
                    let next = due.iter().map(|(at, _)| *at).min();
                    let received = match next {
                        Some(at) => {
                            receiver.recv_timeout(at.saturating_duration_since(Instant::now()))
                        }
                        None => receiver
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                    };
                    match received {
                        Ok(job) => due.push(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) if due.is_empty() => return,
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            std::thread::sleep(Duration::from_millis(1))
                        }
                    }
                    let now = Instant::now();
                    let (ready, later): (Vec<_>, Vec<_>) =
                        due.drain(..).partition(|(at, _)| *at <= now);
                    due = later;
                    for (_, job) in ready {
                        job();
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("probe: cannot start its timer thread: {e}");
        }
        Timer(Mutex::new(sender))
    }

    fn after(&self, delay: Duration, job: Job) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((Instant::now() + delay, job));
    }
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone)]
pub struct Probe {
    name: String,
    log: Option<String>,
    stamp: bool,
    params: Parameters,
    timer: Arc<OnceLock<Timer>>,
}

impl Probe {
    fn wants(&self, action: &str, event: Event) -> bool {
        self.params.get_all(action).any(|e| e == event.name())
    }

    /// Records the event and performs the configured actions; returns whether to reject.
    fn visit(&self, event: Event, detail: &str) -> AgentResult<bool> {
        if let Some(path) = &self.log {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            file.write_all(
                format!("{} {} {} {}\n", self.name, VERSION, event.name(), detail).as_bytes(),
            )?;
        }
        if self.wants("sleep", event) {
            let ms = self.params.parse::<u64>("sleep_ms")?.unwrap_or(1000);
            std::thread::sleep(Duration::from_millis(ms));
        }
        if self.wants("panic", event) {
            panic!("probe {} panics in {}", self.name, event.name());
        }
        if self.wants("fail", event) {
            return Err(AgentError::msg(format!(
                "probe {} fails in {}",
                self.name,
                event.name()
            )));
        }
        Ok(self.wants("reject", event))
    }

    /// Logs as the parameters ask: one line per level, or a flood.
    fn speak(&self, event: Event, logger: &Logger) {
        if self.wants("log_levels", event) {
            agent_error!(logger, "probe {} error line in {}", self.name, event);
            agent_warn!(logger, "probe {} warn line in {}", self.name, event);
            agent_info!(logger, "probe {} info line in {}", self.name, event);
            agent_debug!(logger, "probe {} debug line in {}", self.name, event);
            agent_trace!(logger, "probe {} trace line in {}", self.name, event);
        }
        if self.wants("flood", event) {
            let lines = self
                .params
                .parse::<u64>("flood_lines")
                .ok()
                .flatten()
                .unwrap_or(1000);
            for n in 0..lines {
                agent_info!(logger, "probe {} flood line {n}", self.name);
            }
        }
    }

    /// Goes async as the parameters ask; true when it did (the completion then decides).
    fn go_async<K: Rejectable + 'static>(
        &self,
        event: Event,
        source: &mut SmtpEvent<'_, K>,
        reject: bool,
    ) -> AgentResult<bool> {
        if self.wants("async_never", event) {
            std::mem::forget(source.async_context()?);
            return Ok(true);
        }
        if self.wants("async_drop", event) {
            drop(source.async_context()?);
            return Ok(true);
        }
        if !self.wants("async_sleep", event) {
            return Ok(false);
        }
        let context: AsyncContext<K> = source.async_context()?;
        let ms = self.params.parse::<u64>("sleep_ms")?.unwrap_or(1000);
        let rejection = self.rejection()?;
        let name = self.name.clone();
        let timer = self.timer.get_or_init(Timer::start);
        timer.after(
            Duration::from_millis(ms),
            Box::new(move || {
                agent_debug!(context, "probe {name} completes {event} after {ms} ms");
                context.complete(move |source| {
                    if reject {
                        source.reject(&rejection)?;
                    }
                    Ok(())
                })
            }),
        );
        Ok(true)
    }

    fn rejection(&self) -> AgentResult<SmtpResponse> {
        Ok(SmtpResponse::new(
            550,
            "5.7.1",
            format!("probe {} rejects", self.name),
        )?)
    }
}

impl Probe {
    /// The handler of events whose only argument is the session.
    fn simple<K: Rejectable + 'static>(
        &self,
        event: Event,
        source: &mut mta_agent_sdk::smtp_receive::SmtpEvent<'_, K>,
    ) -> AgentResult {
        let reject = self.visit(event, "")?;
        self.speak(event, &source.logger());
        if self.go_async(event, source, reject)? {
            return Ok(());
        }
        if reject {
            source.reject(&self.rejection()?)?;
        }
        if self.wants("disconnect", event) {
            source.disconnect()?;
        }
        Ok(())
    }
}

#[agent]
impl SmtpReceiveAgent for Probe {
    fn create(parameters: &Parameters) -> Result<Self, AgentError> {
        Ok(Self {
            name: parameters.get_or("name", "probe").to_string(),
            log: parameters.get("log").map(str::to_string),
            stamp: parameters.get("stamp") == Some("true"),
            params: parameters.clone(),
            timer: Arc::new(OnceLock::new()),
        })
    }

    fn on_connect(&mut self, event: &mut ConnectEvent<'_>) -> AgentResult {
        let session = event.session();
        let detail = format!(
            "remote={} service={} tls={}",
            session.remote_endpoint, session.service, session.tls
        );
        if self.visit(Event::OnConnect, &detail)? {
            event.reject(&self.rejection()?)?;
        }
        if self.wants("disconnect", Event::OnConnect) {
            event.disconnect()?;
        }
        Ok(())
    }

    fn on_helo_command(&mut self, event: &mut HeloCommandEvent<'_>) -> AgentResult {
        if self.visit(Event::OnHeloCommand, &format!("domain={}", event.domain()))? {
            event.reject(&self.rejection()?)?;
        }
        Ok(())
    }

    fn on_ehlo_command(&mut self, event: &mut EhloCommandEvent<'_>) -> AgentResult {
        if self.visit(Event::OnEhloCommand, &format!("domain={}", event.domain()))? {
            event.reject(&self.rejection()?)?;
        }
        Ok(())
    }

    fn on_start_tls_command(&mut self, event: &mut StartTlsCommandEvent<'_>) -> AgentResult {
        self.simple(Event::OnStartTlsCommand, event)
    }

    fn on_auth_command(&mut self, event: &mut AuthCommandEvent<'_>) -> AgentResult {
        if self.visit(
            Event::OnAuthCommand,
            &format!("mechanism={}", event.mechanism()),
        )? {
            event.reject(&self.rejection()?)?;
        }
        Ok(())
    }

    fn on_end_of_authentication(
        &mut self,
        event: &mut EndOfAuthenticationEvent<'_>,
    ) -> AgentResult {
        if self.visit(
            Event::OnEndOfAuthentication,
            &format!("identity={}", event.identity()),
        )? {
            event.reject(&self.rejection()?)?;
        }
        Ok(())
    }

    fn on_mail_command(&mut self, event: &mut MailCommandEvent<'_>) -> AgentResult {
        let detail = format!(
            "from={} size={} body={} envid={} ret={}",
            event.from(),
            event.size().unwrap_or(0),
            event.body_type().unwrap_or_default(),
            event.envid().unwrap_or_default(),
            event.ret().unwrap_or_default()
        );
        let reject = self.visit(Event::OnMailCommand, &detail)?;
        self.speak(Event::OnMailCommand, &event.logger());
        if self.go_async(Event::OnMailCommand, event, reject)? {
            return Ok(());
        }
        if reject {
            event.reject(&self.rejection()?)?;
        }
        Ok(())
    }

    fn on_rcpt_command(&mut self, event: &mut RcptCommandEvent<'_>) -> AgentResult {
        let detail = format!(
            "recipient={} notify={} orcpt={}",
            event.recipient(),
            event.notify().unwrap_or_default(),
            event.orcpt().unwrap_or_default()
        );
        let refused = self
            .params
            .get("reject_rcpt")
            .is_some_and(|a| a.eq_ignore_ascii_case(&event.recipient()));
        let reject = self.visit(Event::OnRcptCommand, &detail)? || refused;
        self.speak(Event::OnRcptCommand, &event.logger());
        if self.go_async(Event::OnRcptCommand, event, reject)? {
            return Ok(());
        }
        if reject {
            event.reject(&self.rejection()?)?;
        }
        let to = self.params.get_all("rewrite_rcpt").find_map(|pair| {
            let (from, to) = pair.split_once('=')?;
            from.eq_ignore_ascii_case(&event.recipient()).then_some(to)
        });
        if let Some(to) = to {
            event.set_recipient(to)?;
        }
        Ok(())
    }

    fn on_data_command(&mut self, event: &mut DataCommandEvent<'_>) -> AgentResult {
        self.simple(Event::OnDataCommand, event)
    }

    fn on_end_of_headers(&mut self, event: &mut EndOfHeadersEvent<'_>) -> AgentResult {
        let subject = event.mail_item().subject().unwrap_or_default();
        if self.visit(Event::OnEndOfHeaders, &format!("subject={subject}"))? {
            event.reject(&self.rejection()?)?;
        }
        if self.stamp {
            event
                .mail_item()
                .add_header(&format!("X-Probe-{}", self.name), VERSION)?;
        }
        if self.wants("discard", Event::OnEndOfHeaders) {
            event.discard()?;
        }
        if self.wants("quarantine", Event::OnEndOfHeaders) {
            event.quarantine("probe says so")?;
        }
        Ok(())
    }

    fn on_end_of_data(&mut self, event: &mut EndOfDataEvent<'_>) -> AgentResult {
        let size = event.mail_item().mime().len();
        if self.visit(Event::OnEndOfData, &format!("size={size}"))? {
            event.reject(&self.rejection()?)?;
        }
        if self.wants("discard", Event::OnEndOfData) {
            event.discard()?;
        }
        if self.wants("quarantine", Event::OnEndOfData) {
            event.quarantine("probe says so")?;
        }
        if let Some(to) = self.params.get("submit") {
            let mime = format!("From: probe@example.test\r\nTo: {to}\r\nSubject: submitted by probe {}\r\n\r\nhello\r\n", self.name);
            event.submit_message("probe@example.test", &[to], mime.into_bytes())?;
        }
        Ok(())
    }

    fn on_help_command(&mut self, event: &mut HelpCommandEvent<'_>) -> AgentResult {
        self.simple(Event::OnHelpCommand, event)
    }
    fn on_noop_command(&mut self, event: &mut NoopCommandEvent<'_>) -> AgentResult {
        self.simple(Event::OnNoopCommand, event)
    }
    fn on_rset_command(&mut self, event: &mut RsetCommandEvent<'_>) -> AgentResult {
        self.simple(Event::OnRsetCommand, event)
    }

    fn on_reject(&mut self, event: &mut RejectEvent<'_>) -> AgentResult {
        self.visit(
            Event::OnReject,
            &format!("command={} response={}", event.command(), event.response()),
        )?;
        Ok(())
    }

    fn on_disconnect(&mut self, event: &mut DisconnectEvent<'_>) -> AgentResult {
        self.visit(
            Event::OnDisconnect,
            &format!("reason={}", event.reason().as_str()),
        )?;
        Ok(())
    }
}

export_agents!("Tests.ProbeFactory" => Probe);
