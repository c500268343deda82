//! What raising one event costs, through N no-op agents loaded from a real library across the
//! ABI: `cargo bench -p mta-host --bench agent_dispatch`.
//!
//! Prints ns per event and ns per agent call for N = 0, 1, 10, 50, synchronously (the cost of
//! the calls themselves) and through the blocking pool as an SMTP session raises events (the
//! cost a session pays per event that has agents). The figures are only comparable within one
//! run: the baseline (N = 0) is measured in the same run.

use mta_agent_sdk::{AgentClass, Event};
use mta_host::agents::context::CallContext;
use mta_host::agents::dispatch::{dispatch_blocking, Blocking};
use mta_host::agents::{file, AgentSet, Libraries, Pipeline};
use mta_host::service::Service;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn build_noop_agent(workspace: &Path) -> PathBuf {
    let target = workspace.join("target").join("bench-agents");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "--release", "-p", "noop-agent"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo build");
    assert!(status.success());
    target.join("release/libnoop_agent.so")
}

fn pipeline(dir: &Path, library: &Path, n: usize, libraries: &Libraries) -> Arc<Pipeline> {
    let mut entries = String::new();
    for i in 0..n {
        entries.push_str(&format!(
            "<agent name=\"noop {i}\" baseType=\"SmtpReceiveAgent\" classFactory=\"Bench.NoopFactory\" assemblyPath=\"{}\" enabled=\"true\" />\n",
            library.display()
        ));
    }
    let text = format!(
        "<configuration><mexRuntime><monitoring><agentExecution timeLimitInMilliseconds=\"60000\" /></monitoring><agentList>{entries}</agentList></mexRuntime></configuration>"
    );
    let path = dir.join(format!("agents-{n}.config"));
    std::fs::write(&path, &text).unwrap();
    let parsed = file::read(&path).unwrap();
    Arc::new(Pipeline::build(&parsed, Service::Transport, libraries, None, 1).unwrap())
}

fn context() -> CallContext {
    CallContext::new(Event::OnNoopCommand, Service::Transport)
}

/// Median of `rounds` measurements of `iters` events, in ns per event.
fn measure(rounds: usize, iters: u32, mut f: impl FnMut(u32)) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            f(iters);
            started.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[rounds / 2]
}

fn main() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let library = build_noop_agent(&workspace);
    let dir = std::env::temp_dir().join(format!("mta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let libraries = Libraries::new(dir.join("shadow"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    println!("agent dispatch: one OnNoopCommand event through N no-op agents across the ABI");
    println!(
        "{:>4} {:>14} {:>16} {:>20}",
        "N", "sync ns/event", "sync ns/agent", "blocking ns/event"
    );
    for n in [0usize, 1, 10, 50] {
        let pipeline = pipeline(&dir, &library, n, &libraries);
        let mut set = AgentSet::new(Arc::clone(&pipeline), AgentClass::SmtpReceive);
        let mut cx = context();
        for _ in 0..10_000 {
            set.dispatch(Event::OnNoopCommand, &mut cx).unwrap();
        }
        let iters = if n >= 10 { 20_000 } else { 200_000 };
        let sync = measure(7, iters, |k| {
            for _ in 0..k {
                set.dispatch(Event::OnNoopCommand, &mut cx).unwrap();
            }
        });
        let mut held = Some(set);
        let blocking = runtime.block_on(async {
            let started = Instant::now();
            let k = 20_000u32;
            for _ in 0..k {
                let s = held.take().unwrap();
                match dispatch_blocking(s, Event::OnNoopCommand, context()).await {
                    Blocking::Done(s, _, r) => {
                        r.unwrap();
                        held = Some(s);
                    }
                    Blocking::Abandoned(f) => panic!("{f}"),
                }
            }
            started.elapsed().as_nanos() as f64 / f64::from(k)
        });
        let per_agent = if n == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", sync / n as f64)
        };
        println!("{n:>4} {sync:>14.1} {per_agent:>16} {blocking:>20.1}");
    }
    std::thread::sleep(Duration::from_millis(10));
    let _ = std::fs::remove_dir_all(&dir);
}
