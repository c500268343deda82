//! The agents' own threads: every call into an agent runs here, never on tokio's blocking pool,
//! which does the file I/O (queue fsyncs, Maildir writes) — a hung agent cannot stall those.
//!
//! The pool keeps `size` threads taking calls. A call abandoned for running past twice its time
//! limit keeps its thread; the pool counts that thread as hung and starts another, so the
//! threads that take calls stay `size`. A hung thread that returns at last ends. At most
//! [`MAX_HUNG`] threads are replaced; past that, calls wait for the threads left (and the
//! agents responsible are quarantined long before, see `AgentHost`).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

/// Hung threads replaced, at most.
pub const MAX_HUNG: usize = 256;

/// Threads when nothing configured the pool (tests, benches).
const DEFAULT_SIZE: usize = 16;

/// A call, and whether it was abandoned while it ran.
struct Job {
    run: Box<dyn FnOnce() + Send>,
    abandoned: Arc<AtomicBool>,
}

struct Shared {
    jobs: Mutex<mpsc::Receiver<Job>>,
    /// Signed: a hung thread may end before the caller has counted it.
    hung: AtomicI64,
    replaced: AtomicUsize,
}

/// The pool of agent threads.
pub struct AgentPool {
    sender: Mutex<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    size: usize,
}

static POOL: OnceLock<AgentPool> = OnceLock::new();

impl AgentPool {
    /// Sets the pool's size; only the first call (before any agent call) counts.
    pub fn init(size: usize) {
        let _ = POOL.set(AgentPool::new(size.max(1)));
    }

    /// The pool.
    pub fn global() -> &'static AgentPool {
        POOL.get_or_init(|| AgentPool::new(DEFAULT_SIZE))
    }

    fn new(size: usize) -> Self {
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(Shared {
            jobs: Mutex::new(receiver),
            hung: AtomicI64::new(0),
            replaced: AtomicUsize::new(0),
        });
        let pool = Self {
            sender: Mutex::new(sender),
            shared,
            size,
        };
        for _ in 0..size {
            pool.spawn_thread();
        }
        pool
    }

    fn spawn_thread(&self) {
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("agents".into())
            .spawn(move || worker(&shared));
        if let Err(e) = spawned {
            tracing::error!(message = "Cannot start an agent thread.", error = %e);
        }
    }

    /// Runs `call` on an agent thread. `abandoned` is set by the caller when it gives up on
    /// the call (then the thread, once the call returns, ends: it was replaced).
    pub fn run<T: Send + 'static>(
        &self,
        abandoned: Arc<AtomicBool>,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            run: Box::new(move || {
                let _ = tx.send(call());
            }),
            abandoned,
        };
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if sender.send(job).is_err() {
            tracing::error!(message = "The agent threads are gone.");
        }
        rx
    }

    /// A call was abandoned: its thread is hung, another takes its place.
    pub fn hung(&self) {
        self.shared.hung.fetch_add(1, Ordering::AcqRel);
        if self.shared.replaced.fetch_add(1, Ordering::AcqRel) < MAX_HUNG {
            self.spawn_thread();
        } else {
            tracing::error!(
                message = "Too many hung agent threads; no more are replaced.",
                hung = self.hung_threads()
            );
        }
    }

    /// Threads held by calls that were abandoned and have not returned.
    pub fn hung_threads(&self) -> usize {
        self.shared.hung.load(Ordering::Acquire).max(0) as usize
    }

    /// The threads that take calls.
    pub fn size(&self) -> usize {
        self.size
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let jobs = shared.jobs.lock().unwrap_or_else(|e| e.into_inner());
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        (job.run)();
        if job.abandoned.load(Ordering::Acquire) {
            // This thread was replaced while the call ran: it ends.
            shared.hung.fetch_sub(1, Ordering::AcqRel);
            return;
        }
    }
}
