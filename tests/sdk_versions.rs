//! The SDK as a third party uses it: the agent of the SDK's README, built outside this
//! workspace against copies of `agent-sdk/` (its manifest unchanged, taken by git tag; then
//! with the version bumped, taken by path), loaded by the real `mta`. Checks the version rule (which builds load), the one-line
//! refusals (on install and on a live reload), and that `mta agent install --dry-run` changes
//! no file.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(20);
const FACTORY: &str = "Example.BlockDomainFactory";

/// `0.1.0` -> (0, 1, 0).
fn parse(version: &str) -> (u64, u64, u64) {
    let v: Vec<u64> = version.split('.').map(|p| p.parse().unwrap()).collect();
    (v[0], v[1], v[2])
}

/// A fenced block of `lang` following `heading` in `text`.
fn block<'t>(text: &'t str, heading: &str, lang: &str) -> &'t str {
    let from = text.find(heading).expect("heading in the README");
    let open = format!("```{lang}\n");
    let start = from + text[from..].find(&open).expect("code block") + open.len();
    let end = start + text[start..].find("```").unwrap();
    &text[start..end]
}

/// Copies a directory tree, leaving out build output.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "target" {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// The scratch tree of this test: SDK copies and the agent crate, outside the workspace (a
/// crate below it would be taken for a member of the workspace).
struct Outside {
    dir: PathBuf,
    cargo: String,
    target: PathBuf,
}

impl Outside {
    /// None, after saying why, when cargo cannot run here.
    fn new() -> Option<Self> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        if !Command::new(&cargo)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            println!(
                "skipped: cargo ({cargo}) is not available to build an agent outside the workspace"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("mta-sdk-versions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            !dir.starts_with(workspace()),
            "{} is inside the workspace",
            dir.display()
        );
        // One target directory for every build, kept between runs: abi_stable and syn are
        // compiled once; only the SDK copy and the agent are rebuilt for each version.
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"))
            .join("sdk-versions");
        Some(Self { dir, cargo, target })
    }

    /// A copy of `agent-sdk/` with `version` in its manifest, and `change` applied to its
    /// `src/abi.rs`.
    fn sdk(&self, name: &str, version: &str, change: impl Fn(String) -> String) -> PathBuf {
        let sdk = self.dir.join(name);
        copy_tree(&workspace().join("agent-sdk"), &sdk);
        let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap();
        let current = format!("version = \"{}\"\n", mta_agent_sdk::version::SDK_VERSION);
        assert!(
            manifest.contains(&current),
            "no {current:?} in the SDK's manifest"
        );
        std::fs::write(
            sdk.join("Cargo.toml"),
            manifest.replacen(&current, &format!("version = \"{version}\"\n"), 1),
        )
        .unwrap();
        let abi = std::fs::read_to_string(sdk.join("src/abi.rs")).unwrap();
        std::fs::write(sdk.join("src/abi.rs"), change(abi)).unwrap();
        sdk
    }

    /// Builds the README's agent against `sdk` offline and returns a copy of its library.
    fn build_agent(&self, sdk: &Path, name: &str) -> PathBuf {
        let path = format!("{{ path = {:?} }}", sdk.display().to_string());
        self.build_agent_with(&path, true, name)
    }

    /// Makes `sdk` a git repository tagged `sdk-v<version>`, as a release would be, and builds
    /// the agent against the tag; None, after saying why, when git cannot run here.
    fn build_agent_from_git_tag(&self, sdk: &Path, version: &str, name: &str) -> Option<PathBuf> {
        let git = |args: &[&str]| {
            Command::new("git")
                .current_dir(sdk)
                .args(["-c", "user.name=test", "-c", "user.email=test@example.test"])
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let tag = format!("sdk-v{version}");
        if !(git(&["init", "-q"])
            && git(&["add", "-A"])
            && git(&["commit", "-q", "-m", "SDK"])
            && git(&["tag", &tag]))
        {
            println!("git is not available: the SDK is taken by path only");
            return None;
        }
        let dependency = format!("{{ git = \"file://{}\", tag = \"{tag}\" }}", sdk.display());
        // Not --offline: cargo fetches the git repository (a local one); the lock file already
        // pins every registry crate, so the registry is not asked.
        Some(self.build_agent_with(&dependency, false, name))
    }

    /// The directory name of the SDK taken from git: cargo names its clones after it, so it is
    /// unique to this run, and its clones are removed with the run's files.
    fn git_name(&self) -> String {
        format!("mta-sdk-git-{}", std::process::id())
    }

    /// Builds the README's agent with `dependency` as its SDK dependency.
    fn build_agent_with(&self, dependency: &str, offline: bool, name: &str) -> PathBuf {
        let readme = std::fs::read_to_string(workspace().join("agent-sdk/README.md")).unwrap();
        let agent = self.dir.join("agent");
        std::fs::create_dir_all(agent.join("src")).unwrap();
        let manifest = block(&readme, "## A complete agent", "toml");
        let dependency = format!("mta-agent-sdk = {dependency}");
        assert!(manifest.contains("mta-agent-sdk = \""), "{manifest}");
        let manifest: String = manifest
            .lines()
            .map(|l| {
                if l.starts_with("mta-agent-sdk =") {
                    dependency.clone()
                } else {
                    l.to_string()
                }
            })
            .map(|l| l + "\n")
            .collect();
        std::fs::write(agent.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(
            agent.join("src/lib.rs"),
            block(&readme, "## A complete agent", "rust"),
        )
        .unwrap();
        // The workspace's lock file: the versions of abi_stable and syn already in ~/.cargo.
        std::fs::copy(workspace().join("Cargo.lock"), agent.join("Cargo.lock")).unwrap();
        let out = Command::new(&self.cargo)
            .current_dir(&agent)
            .args(["build", "--quiet"])
            .args(offline.then_some("--offline"))
            .env("CARGO_TARGET_DIR", &self.target)
            // Each run builds from new paths, which incremental caches would only pile up.
            .env("CARGO_INCREMENTAL", "0")
            .output()
            .expect("running cargo build");
        assert!(
            out.status.success(),
            "building the agent against {dependency} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let built = self.target.join("debug/libblock_domain.so");
        let library = self.dir.join(format!("lib{name}.so"));
        std::fs::copy(&built, &library).unwrap();
        library
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if std::env::var_os("MTA_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // Cargo's clones of the git-tagged SDK.
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        for clones in cargo_home
            .iter()
            .flat_map(|h| [h.join("git/db"), h.join("git/checkouts")])
        {
            for entry in std::fs::read_dir(clones).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{}-", self.git_name())) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        // The SDK copies and the agent are new packages on every run (their paths differ): drop
        // their build output so the shared target directory keeps only the registry crates.
        for sub in ["deps", ".fingerprint", "build"] {
            let Ok(entries) = std::fs::read_dir(self.target.join("debug").join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().replace('-', "_");
                let name = name.strip_prefix("lib").unwrap_or(&name);
                if name.starts_with("mta_agent_sdk") || name.starts_with("block_domain") {
                    let _ = std::fs::remove_dir_all(entry.path());
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// Every file under `dir` with its content.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(snapshot(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn agents_built_outside_against_current_patch_and_minor_bumped_sdks_load_or_are_refused_in_one_line(
) {
    let Some(outside) = Outside::new() else {
        return;
    };
    let host = mta_agent_sdk::version::SDK_VERSION;
    let (major, minor, patch) = parse(host);
    assert_eq!(
        major, 0,
        "the cases below are written for the rule below 1.0"
    );
    let patched = format!("{major}.{minor}.{}", patch + 1);
    let bumped = format!("{major}.{}.0", minor + 1);
    let miscut = format!("{major}.{minor}.{}", patch + 2);

    // The current SDK as a release tag, the others by path: both are how an agent outside this
    // repository takes it, and both resolve to the SDK's own manifest.
    let current_sdk = outside.sdk(&outside.git_name(), host, |abi| abi);
    let current = outside
        .build_agent_from_git_tag(&current_sdk, host, "current")
        .unwrap_or_else(|| outside.build_agent(&current_sdk, "current"));
    let patch_lib = outside.build_agent(&outside.sdk("sdk-patch", &patched, |abi| abi), "patch");
    let minor_lib = outside.build_agent(&outside.sdk("sdk-minor", &bumped, |abi| abi), "minor");
    // A patch release that changed a type of the boundary, which the rule forbids: the versions
    // say compatible, the layout check must still refuse it.
    let layout_lib = outside.build_agent(
        &outside.sdk("sdk-layout", &miscut, |abi| {
            let scope = "#[repr(u8)]\n#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]\npub enum PropertyScope";
            assert!(abi.contains(scope), "PropertyScope's declaration changed; update this test");
            abi.replacen(scope, &scope.replace("u8", "u16"), 1)
        }),
        "layout",
    );

    let dir = TestDir::new("sdk-versions");
    let agents = dir.write(
        "agents.config",
        &agents_xml(1000, &[Entry::probe("Probe", &dir.path("probe.log"))]),
    );
    let config = [
        "--agents-config",
        agents.to_str().unwrap(),
        "--fetagents-config",
    ];
    let fet = dir.path("fetagents.config");
    let mta = |args: &[&str]| {
        let mut all: Vec<&str> = config.to_vec();
        all.push(fet.to_str().unwrap());
        all.extend_from_slice(args);
        run_mta(&dir.0, &all)
    };
    let before = snapshot(&dir.0);

    // Same version and a newer patch load; the report names the versions and the factory.
    for (library, version) in [(&current, host), (&patch_lib, patched.as_str())] {
        let (code, out, err) = mta(&["agent", "install", "--dry-run", library.to_str().unwrap()]);
        assert_eq!(code, 0, "{version}: {out}{err}");
        assert_eq!(
            out,
            format!(
                "Library {}\n  SDK: built against mta-agent-sdk {version}; this host uses {host}: compatible\n  Factories:\n    {FACTORY:<28} SmtpReceiveAgent: OnMailCommand\nDry run: no file was changed.\n",
                library.display()
            )
        );
        // With a name and a factory, every check of an install runs, and still nothing is written.
        let (code, out, err) = mta(&[
            "agent",
            "install",
            "--dry-run",
            "--name",
            "Block",
            "--factory",
            FACTORY,
            "--assembly",
            library.to_str().unwrap(),
            "--parameter",
            "domain=spam.test",
        ]);
        assert_eq!(code, 0, "{version}: {out}{err}");
        assert!(out.contains("Would install agent \"Block\" (SmtpReceiveAgent, factory \"Example.BlockDomainFactory\")"), "{out}");
    }

    // A newer minor version is refused for its version, in one line naming both.
    let (code, out, err) = mta(&[
        "agent",
        "install",
        "--name",
        "Block",
        "--factory",
        FACTORY,
        "--assembly",
        minor_lib.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(out, "");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: agent \"Block\": library {} was built against mta-agent-sdk {bumped}, but this host uses mta-agent-sdk {host}: rebuild the agent against mta-agent-sdk {major}.{minor} (the SDK's version rule: {})\n",
            minor_lib.display(),
            mta_agent_sdk::version::RULE
        )
    );

    // A layout difference under compatible versions: one line naming the type, where it is
    // used, and how it differs; abi_stable's report only with --verbose.
    let (code, out, err) = mta(&[
        "agent",
        "install",
        "--dry-run",
        "--name",
        "Block",
        "--factory",
        FACTORY,
        "--assembly",
        layout_lib.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: agent \"Block\": library {} was built against mta-agent-sdk {miscut} and this host uses mta-agent-sdk {host}, but their layouts differ: type PropertyScope (in EventHost::property) has a different repr attribute (host: Int(U8), library: Int(U16)); rebuild the agent against this host's SDK (--verbose or MTA_LOG=debug shows abi_stable's full report)\n",
            layout_lib.display()
        )
    );
    let (code, _, err) = mta(&[
        "--verbose",
        "agent",
        "install",
        "--dry-run",
        layout_lib.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.lines().count() > 100, "{err}");
    assert!(err.contains("Layout of expected type"), "{err}");

    // The old SDK's fixture (0.0.1) is refused for its version, in one line too.
    let (code, _, err) = mta(&[
        "agent",
        "install",
        "--dry-run",
        lib("old-sdk-agent").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("was built against mta-agent-sdk 0.0.1, but this host uses mta-agent-sdk"),
        "{err}"
    );

    // Nothing above wrote anything: the agents file is byte-identical, no file appeared.
    assert_eq!(snapshot(&dir.0), before);

    // And the library built outside, installed for real, refuses mail as the README says.
    let (code, out, err) = mta(&[
        "agent",
        "install",
        "--name",
        "Block",
        "--factory",
        FACTORY,
        "--assembly",
        current.to_str().unwrap(),
        "--parameter",
        "domain=spam.test",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = mta(&["agent", "enable", "Block"]);
    assert_eq!(code, 0, "{out}{err}");
    let running = Mta::start(
        &dir,
        &format!("[agents]\ntransport = {:?}\n", agents.display().to_string()),
        &["--roles", "transport"],
    );
    let mut smtp = Smtp::ehlo(running.transport);
    assert_eq!(
        smtp.cmd("MAIL FROM:<x@spam.test>").code,
        550,
        "{}",
        running.log()
    );
    assert_eq!(
        smtp.cmd("MAIL FROM:<x@fine.test>").code,
        250,
        "{}",
        running.log()
    );

    // A live reload onto the mis-cut build is refused in one log line naming the type; the
    // full report is logged at debug level only, and the running pipeline keeps serving.
    let miscut_entry = Entry {
        name: "Block",
        base_type: "SmtpReceiveAgent",
        factory: FACTORY,
        assembly: layout_lib.display().to_string(),
        enabled: true,
        params: vec![("domain", "spam.test".to_string())],
    };
    dir.replace(
        "agents.config",
        agents_xml(1000, &[miscut_entry]).as_bytes(),
    );
    let failed = the_failed_reload(&running);
    let text = running.log();
    assert!(failed.contains(&format!(
        "agent \"Block\": library {} was built against mta-agent-sdk {miscut} and this host uses mta-agent-sdk {host}, but their layouts differ: type PropertyScope (in EventHost::property) has a different repr attribute",
        layout_lib.display()
    )), "{failed}");
    assert!(failed.len() < 1500, "{failed}");
    let reports: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Compared <this>"))
        .collect();
    assert!(
        !reports.is_empty(),
        "no full report at debug level:\n{text}"
    );
    assert!(reports.iter().all(|l| l.contains(" DEBUG ")), "{reports:?}");
    assert_eq!(smtp.cmd("RSET").code, 250);
    assert_eq!(
        smtp.cmd("MAIL FROM:<x@spam.test>").code,
        550,
        "{}",
        running.log()
    );
}

/// Waits for the server's one "Agent pipeline reload failed" line, and returns it.
fn the_failed_reload(mta: &Mta) -> String {
    assert!(
        mta.wait_log("Agent pipeline reload failed", 1, WAIT),
        "{}",
        mta.log()
    );
    let text = mta.log();
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Agent pipeline reload failed"))
        .collect();
    assert_eq!(failed.len(), 1, "{text}");
    failed[0].to_string()
}

#[test]
fn a_live_reload_refused_for_its_sdk_logs_one_line() {
    let dir = TestDir::new("sdk-reload");
    let log = dir.path("probe.log");
    dir.write(
        "agents.config",
        &agents_xml(1000, &[Entry::probe("Probe", &log)]),
    );
    let mta = Mta::start(
        &dir,
        "[agents]\ntransport = \"agents.config\"\n",
        &["--roles", "transport"],
    );
    let old = Entry::probe("Old", &log).assembly(&lib("old-sdk-agent"));
    dir.replace(
        "agents.config",
        agents_xml(1000, &[Entry::probe("Probe", &log), old]).as_bytes(),
    );
    let failed = the_failed_reload(&mta);
    assert!(failed.contains(&format!(
        "agent \"Old\": library {} was built against mta-agent-sdk 0.0.1, but this host uses mta-agent-sdk {}: rebuild the agent against mta-agent-sdk",
        lib("old-sdk-agent").display(),
        mta_agent_sdk::version::SDK_VERSION
    )), "{failed}");
    assert!(failed.len() < 1000, "{failed}");
    assert_eq!(mta.generation("transport"), 1);
    // The status file is rewritten every second too: wait for the one that has the error.
    assert!(wait_until(WAIT, || mta.status("transport")["last_error"].is_string()));
    let status = mta.status("transport");
    assert_eq!(
        status["last_error"].as_str().unwrap().lines().count(),
        1,
        "{status}"
    );
}
