//! The agents files and the management commands, through the real `mta` binary and real agent
//! libraries: every validation error with its position and message, and every `mta agent`
//! command's effect on the file.

mod support;

use support::*;

/// `line:column` of the first occurrence of `needle` in `text` (1-based).
fn at(text: &str, needle: &str) -> String {
    let offset = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("{line}:{column}")
}

fn check(dir: &TestDir, file: &str, text: &str, flag: &str) -> (i32, String) {
    let path = dir.write(file, text);
    let (code, out, err) = run_mta(&dir.0, &[flag, path.to_str().unwrap(), "config", "check"]);
    (code, format!("{out}{err}"))
}

fn probe_entry(name: &str) -> String {
    format!(
        r#"<agent name="{name}" baseType="SmtpReceiveAgent" classFactory="Tests.ProbeFactory" assemblyPath="{}" enabled="true" />"#,
        lib("probe").display()
    )
}

fn file_with(entries: &str) -> String {
    format!(
        "<configuration>\n  <mexRuntime>\n    <monitoring>\n      <agentExecution timeLimitInMilliseconds=\"1000\" />\n    </monitoring>\n    <agentList>\n      {entries}\n    </agentList>\n  </mexRuntime>\n</configuration>\n"
    )
}

#[test]
fn a_valid_file_with_exchange_and_short_base_types_loads() {
    let dir = TestDir::new("valid");
    let text = file_with(&format!(
        "{}\n      <agent name=\"Two\" baseType=\"Microsoft.Exchange.Data.Transport.Smtp.SmtpReceiveAgent\" classFactory=\"Mta.Samples.HeaderStamperFactory\" assemblyPath=\"{}\" enabled=\"true\"><parameter name=\"header\" value=\"X-T\" /></agent>",
        probe_entry("One"),
        lib("header-stamper").display()
    ));
    let (code, out) = check(&dir, "agents.config", &text, "--agents-config");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("transport: 2 enabled agent(s)"), "{out}");
}

#[test]
fn each_validation_error_is_reported_with_file_line_column_and_expectation() {
    let dir = TestDir::new("errors");
    let probe = lib("probe").display().to_string();
    let bogus = dir.write("bogus.so", "this is not a library");
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "malformed XML",
            "<configuration><mexRuntime><agentList></mexRuntime></configuration>".into(),
            "</mexRuntime>",
            "malformed XML",
        ),
        (
            "unknown element",
            file_with("<agnet name=\"x\" />"),
            "<agnet",
            "unknown element <agnet> in <agentList>: expected <agent>",
        ),
        (
            "missing attribute",
            file_with(&format!("<agent name=\"A\" baseType=\"SmtpReceiveAgent\" assemblyPath=\"{probe}\" enabled=\"true\" />")),
            "<agent ",
            "<agent> lacks the required attribute classFactory=\"...\"",
        ),
        (
            "bad baseType",
            file_with(&format!("<agent name=\"A\" baseType=\"SmtpAgent\" classFactory=\"Tests.ProbeFactory\" assemblyPath=\"{probe}\" enabled=\"true\" />")),
            "SmtpAgent\"",
            "baseType=\"SmtpAgent\" is not an agent class: expected one of SmtpReceiveAgent",
        ),
        (
            "invalid name",
            file_with(&probe_entry("bad/name")),
            "bad/name",
            "agent name \"bad/name\" is not valid: expected 1 to 64 characters",
        ),
        (
            "name too long",
            file_with(&probe_entry(&"n".repeat(65))),
            "nnnn",
            "is not valid: expected 1 to 64 characters",
        ),
        (
            "duplicate name",
            file_with(&format!("{}\n      {}", probe_entry("Same"), probe_entry("sAME"))),
            "sAME",
            "agent name \"sAME\" is already used at line 7 (names are unique ignoring case)",
        ),
        (
            "library missing",
            file_with(&probe_entry("A").replace(&probe, "/nonexistent/libnothing.so")),
            "/nonexistent",
            "library /nonexistent/libnothing.so does not exist",
        ),
        (
            "library not loadable",
            file_with(&probe_entry("A").replace(&probe, bogus.to_str().unwrap())),
            bogus.to_str().unwrap(),
            "is not loadable",
        ),
        (
            "no such factory",
            file_with(&probe_entry("A").replace("Tests.ProbeFactory", "Tests.NoSuchFactory")),
            "Tests.NoSuchFactory",
            "has no factory named \"Tests.NoSuchFactory\"; it exports: \"Tests.ProbeFactory\" (SmtpReceiveAgent)",
        ),
        (
            "factory class differs from baseType",
            file_with(&probe_entry("A").replace("baseType=\"SmtpReceiveAgent\"", "baseType=\"RoutingAgent\"")),
            "RoutingAgent\"",
            "factory \"Tests.ProbeFactory\" creates a SmtpReceiveAgent, but baseType says RoutingAgent",
        ),
        (
            "incompatible SDK",
            file_with(&probe_entry("Old").replace(&probe, lib("old-sdk-agent").to_str().unwrap())),
            Box::leak(lib("old-sdk-agent").display().to_string().into_boxed_str()),
            "was built against mta-agent-sdk 0.0.1, but this host uses mta-agent-sdk 0.1.0",
        ),
        (
            "two delivery agents, one protocol",
            file_with(&format!(
                "<agent name=\"H1\" baseType=\"DeliveryAgent\" classFactory=\"Mta.Samples.HttpDeliveryFactory\" assemblyPath=\"{0}\" enabled=\"true\"><parameter name=\"url\" value=\"http://127.0.0.1:1/\" /></agent>\n      <agent name=\"H2\" baseType=\"DeliveryAgent\" classFactory=\"Mta.Samples.HttpDeliveryFactory\" assemblyPath=\"{0}\" enabled=\"true\"><parameter name=\"url\" value=\"http://127.0.0.1:2/\" /></agent>",
                lib("http-delivery").display()
            )),
            "<agent name=\"H2\"",
            "agent \"H2\" claims delivery protocol \"HTTP\", already claimed by agent \"H1\" at line 7",
        ),
        (
            "bad time limit",
            file_with(&probe_entry("A")).replace("\"1000\"", "\"soon\""),
            "soon",
            "timeLimitInMilliseconds=\"soon\" is not valid: expected a whole number of milliseconds above 0",
        ),
        (
            "parameters refused by the agent",
            file_with(&format!(
                "<agent name=\"S\" baseType=\"SmtpReceiveAgent\" classFactory=\"Mta.Samples.HeaderStamperFactory\" assemblyPath=\"{}\" enabled=\"true\"><parameter name=\"header\" value=\"Bad Name\" /></agent>",
                lib("header-stamper").display()
            )),
            "<agent name=\"S\"",
            "agent \"S\" refused its parameters",
        ),
    ];
    for (what, text, needle, message) in cases {
        let (code, out) = check(&dir, "agents.config", &text, "--agents-config");
        assert_ne!(code, 0, "{what}: accepted:\n{out}");
        let position = at(&text, needle);
        let file = dir.path("agents.config");
        let expected_prefix = format!("{}:{position}: ", file.display());
        let found = out
            .lines()
            .any(|l| l.starts_with(&expected_prefix) && l.contains(message));
        assert!(found, "{what}: expected a line starting {expected_prefix:?} containing {message:?}, got:\n{out}");
    }
}

#[test]
fn the_front_end_accepts_smtp_receive_agents_only_and_warns_about_end_of_data() {
    let dir = TestDir::new("frontend");
    let routing = file_with(&format!(
        "<agent name=\"R\" baseType=\"RoutingAgent\" classFactory=\"Mta.Samples.RecipientRouterFactory\" assemblyPath=\"{}\" enabled=\"true\"><parameter name=\"pattern\" value=\"*\" /><parameter name=\"routing_domain\" value=\"X\" /></agent>",
        lib("recipient-router").display()
    ));
    let (code, out) = check(&dir, "fetagents.config", &routing, "--fetagents-config");
    assert_ne!(code, 0);
    assert!(
        out.contains(&format!("{}: agent \"R\" is a RoutingAgent: the Front End Transport service runs SmtpReceiveAgent agents only", at(&routing, "RoutingAgent\""))),
        "{out}"
    );

    let stamper = file_with(&format!(
        "<agent name=\"Stamper\" baseType=\"SmtpReceiveAgent\" classFactory=\"Mta.Samples.HeaderStamperFactory\" assemblyPath=\"{}\" enabled=\"true\" />",
        lib("header-stamper").display()
    ));
    let (code, out) = check(&dir, "fetagents.config", &stamper, "--fetagents-config");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning: agent \"Stamper\" handles OnEndOfData, which the Front End service never raises"), "{out}");
}

#[test]
fn an_agents_file_for_the_mailbox_service_is_refused() {
    let dir = TestDir::new("mailbox");
    dir.write("mailbox.config", &file_with(""));
    dir.write("mta.toml", "[agents]\nmailbox = \"mailbox.config\"\n");
    let (code, out, err) = run_mta(&dir.0, &["config", "check"]);
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("the Mailbox Transport service runs no agents"),
        "{out}{err}"
    );
    let (code, _, err) = run_mta(&dir.0, &["agent", "list", "--service", "mailbox"]);
    assert_ne!(code, 0);
    assert!(err.contains("runs no agents"), "{err}");
}

#[test]
fn agent_commands_edit_the_file_and_keep_comments() {
    let dir = TestDir::new("commands");
    let original = file_with("<!-- operators' note: keep this -->")
        .replace("<agentList>", "<agentList vendor=\"kept\">");
    let file = dir.write("agents.config", &original);
    let f = file.to_str().unwrap();
    let probe = lib("probe").display().to_string();
    let stamper = lib("header-stamper").display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["--agents-config", f, "agent"];
        all.extend_from_slice(args);
        run_mta(&dir.0, &all)
    };

    let (code, out, err) = run(&[
        "install",
        "--name",
        "Probe One",
        "--factory",
        "Tests.ProbeFactory",
        "--assembly",
        &probe,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run(&[
        "install",
        "--name",
        "Stamper",
        "--factory",
        "Mta.Samples.HeaderStamperFactory",
        "--assembly",
        &stamper,
    ]);
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("<!-- operators' note: keep this -->") && text.contains("vendor=\"kept\""),
        "{text}"
    );
    assert!(text.contains("name=\"Probe One\" baseType=\"Microsoft.Exchange.Data.Transport.Smtp.SmtpReceiveAgent\""), "{text}");
    assert_eq!(
        text.matches("enabled=\"false\"").count(),
        2,
        "installed agents start disabled:\n{text}"
    );

    // Refusals: taken name, unknown factory, class the service refuses.
    let (code, _, err) = run(&[
        "install",
        "--name",
        "probe one",
        "--factory",
        "Tests.ProbeFactory",
        "--assembly",
        &probe,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("already installed"), "{err}");
    let (code, _, err) = run(&[
        "install",
        "--name",
        "X",
        "--factory",
        "Nope",
        "--assembly",
        &probe,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("has no factory named \"Nope\""), "{err}");
    let fet = dir.path("fetagents.config");
    let (code, _, err) = run_mta(
        &dir.0,
        &[
            "--fetagents-config",
            fet.to_str().unwrap(),
            "agent",
            "install",
            "--service",
            "frontend",
            "--name",
            "R",
            "--factory",
            "Mta.Samples.RecipientRouterFactory",
            "--assembly",
            lib("recipient-router").to_str().unwrap(),
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("the Front End Transport service runs SmtpReceiveAgent agents only"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "install",
        "--service",
        "mailbox",
        "--name",
        "X",
        "--factory",
        "F",
        "--assembly",
        &probe,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("runs no agents"), "{err}");

    // Enable, reorder, list, pipeline.
    assert_eq!(run(&["enable", "Probe One"]).0, 0);
    assert_eq!(run(&["enable", "stamper"]).0, 0);
    assert_eq!(run(&["set-priority", "Stamper", "1"]).0, 0);
    let (code, out, err) = run(&["list", "--service", "transport"]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("SmtpReceiveAgent"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].trim_start().starts_with("1")
            && rows[0].contains("Stamper")
            && rows[0].contains("true"),
        "{out}"
    );
    assert!(
        rows[1].trim_start().starts_with("2") && rows[1].contains("Probe One"),
        "{out}"
    );
    assert!(out.contains("(not running)"), "{out}");

    let (code, out, err) = run(&["pipeline", "--service", "transport"]);
    assert_eq!(code, 0, "{err}");
    let eod = out
        .lines()
        .find(|l| l.trim_start().starts_with("OnEndOfData"))
        .unwrap_or_default();
    assert!(eod.contains("1. Stamper, 2. Probe One"), "{out}");
    let connect = out
        .lines()
        .find(|l| l.trim_start().starts_with("OnConnect"))
        .unwrap_or_default();
    assert!(
        connect.contains("2. Probe One") && !connect.contains("Stamper"),
        "{out}"
    );

    // Disable and uninstall.
    assert_eq!(run(&["disable", "Probe One"]).0, 0);
    let (_, out, _) = run(&["pipeline"]);
    assert!(!out.contains("Probe One"), "{out}");
    assert_eq!(run(&["uninstall", "Probe One"]).0, 0);
    let (code, _, err) = run(&["enable", "Probe One"]);
    assert_ne!(code, 0);
    assert!(err.contains("no agent named \"Probe One\""), "{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("Probe One") && text.contains("Stamper") && text.contains("keep this"),
        "{text}"
    );
    let (code, out) = check(&dir, "agents.config", &text, "--agents-config");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn installing_a_second_delivery_agent_for_a_protocol_is_refused() {
    let dir = TestDir::new("protocol");
    let file = dir.path("agents.config");
    let f = file.to_str().unwrap();
    let http = lib("http-delivery").display().to_string();
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--name",
            "H1",
            "--factory",
            "Mta.Samples.HttpDeliveryFactory",
            "--assembly",
            &http,
            "--parameter",
            "url=http://127.0.0.1:1/",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--name",
            "H2",
            "--factory",
            "Mta.Samples.HttpDeliveryFactory",
            "--assembly",
            &http,
            "--parameter",
            "url=http://127.0.0.1:1/",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("delivery protocol \"HTTP\" is already claimed by agent \"H1\""),
        "{err}"
    );
}

#[test]
fn install_takes_parameters_and_enable_refuses_an_agent_that_cannot_load() {
    let dir = TestDir::new("install-params");
    let file = dir.path("agents.config");
    let f = file.to_str().unwrap();
    let stamper = lib("header-stamper").display().to_string();
    let (code, _, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--name",
            "S",
            "--factory",
            "Mta.Samples.HeaderStamperFactory",
            "--assembly",
            &stamper,
            "--parameter",
            "header=Bad Name",
        ],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("refuses these parameters") && err.contains("Bad Name"),
        "{err}"
    );
    let (code, out, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--name",
            "S",
            "--factory",
            "Mta.Samples.HeaderStamperFactory",
            "--assembly",
            &stamper,
            "--parameter",
            "header=X-Ok",
            "--parameter",
            "value=a=b",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(r#"<parameter name="header" value="X-Ok" />"#)
            && text.contains(r#"<parameter name="value" value="a=b" />"#),
        "{text}"
    );
    assert_eq!(
        run_mta(&dir.0, &["--agents-config", f, "agent", "enable", "S"]).0,
        0
    );

    // An entry whose library has gone cannot be enabled.
    let moved = dir.path("libgone.so");
    std::fs::copy(lib("probe"), &moved).unwrap();
    let (code, _, err) = run_mta(
        &dir.0,
        &[
            "--agents-config",
            f,
            "agent",
            "install",
            "--name",
            "P",
            "--factory",
            "Tests.ProbeFactory",
            "--assembly",
            moved.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&moved).unwrap();
    let (code, _, err) = run_mta(&dir.0, &["--agents-config", f, "agent", "enable", "P"]);
    assert_ne!(code, 0);
    assert!(err.contains("libgone.so does not exist"), "{err}");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains(r#"name="P""#),
        "the file is unchanged"
    );
    let parsed_enabled = std::fs::read_to_string(&file)
        .unwrap()
        .matches(r#"enabled="true""#)
        .count();
    assert_eq!(parsed_enabled, 1);
}

#[test]
fn agents_files_and_libraries_writable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new("strict-modes");
    let library = dir.path("libprobe.so");
    std::fs::copy(lib("probe"), &library).unwrap();
    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o666)).unwrap();
    let text = file_with(&probe_entry("P").replace(
        &lib("probe").display().to_string(),
        library.to_str().unwrap(),
    ));
    let (code, out) = check(&dir, "agents.config", &text, "--agents-config");
    assert_ne!(code, 0);
    assert!(
        out.contains("is writable by its group or other users (mode 666): refused"),
        "{out}"
    );

    std::fs::set_permissions(&library, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, out) = check(&dir, "agents.config", &text, "--agents-config");
    assert_eq!(code, 0, "{out}");

    let file = dir.path("agents.config");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o646)).unwrap();
    let (code, out, err) = run_mta(
        &dir.0,
        &["--agents-config", file.to_str().unwrap(), "config", "check"],
    );
    assert_ne!(code, 0);
    assert!(
        format!("{out}{err}").contains("the agents file")
            && format!("{out}{err}").contains("is writable by its group or other users"),
        "{out}{err}"
    );
}
