//! `mta status`: what the running server runs and how it is doing.

use super::control;
use crate::config::HostConfig;
use std::process::ExitCode;

pub fn run(config: &HostConfig, json: bool) -> anyhow::Result<ExitCode> {
    let Some(status) = control::status(config)? else {
        println!(
            "No server is running with the data directory {}.",
            config.data_dir.display()
        );
        return Ok(ExitCode::from(3));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "mta {} running, pid {}, up {}",
        status.version,
        status.pid,
        control::age(status.started_ms)
    );
    println!(
        "configuration  {}",
        status.config.as_deref().unwrap_or("(embedded defaults)")
    );
    println!("data           {}", status.data_dir);
    let c = &status.configuration;
    println!(
        "reloads        configuration generation {}{}",
        c.generation,
        match &c.last_error {
            Some(e) => format!(
                ", last reload FAILED (the running configuration stays): {}",
                e.replace('\n', " / ")
            ),
            None if c.last_attempt_ms > 0 => ", last reload ok".into(),
            None => String::new(),
        }
    );
    if !c.restart_needed.is_empty() {
        println!(
            "               needs a restart for: {}",
            c.restart_needed.join(", ")
        );
    }
    for (service, address) in &status.listeners {
        println!("{:<14} listening on {address}", service);
    }
    for p in &status.pipelines {
        println!(
            "{:<14} agents pipeline generation {}, {} agents, {}{}{}",
            p.service,
            p.generation,
            p.agents,
            match p.file.as_deref() {
                Some(f) if std::path::Path::new(f).exists() => f.to_string(),
                Some(f) => format!("{f} (not there yet: watched)"),
                None => "no agents file".into(),
            },
            p.last_error
                .as_deref()
                .map(|e| format!(
                    "\n               last reload FAILED: {}",
                    e.replace('\n', " / ")
                ))
                .unwrap_or_else(|| ", last reload ok".into()),
            if p.quarantined.is_empty() {
                String::new()
            } else {
                format!("\n               quarantined: {}", p.quarantined.join(", "))
            }
        );
    }
    if !status.queues.is_empty() {
        let total: usize = status.queues.iter().map(|(_, n)| n).sum();
        let busy: Vec<String> = status
            .queues
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(q, n)| format!("{q} {n}"))
            .collect();
        println!(
            "queues         {total} items{}",
            if busy.is_empty() {
                String::new()
            } else {
                format!(" ({})", busy.join(", "))
            }
        );
    }
    if let Some(bp) = &status.back_pressure {
        println!(
            "back pressure  {}",
            if bp.refusing {
                "new mail refused (452 4.3.1)"
            } else {
                "normal, new mail accepted"
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
