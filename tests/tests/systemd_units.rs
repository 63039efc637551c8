//! The systemd units in `dist/systemd/` pass systemd's own check and run the daemons as
//! the design asks: an unprivileged user with no capabilities, the agent reaching Docker
//! through the `docker` group only and writing nowhere but its demo folder.

use std::collections::HashMap;
use std::process::Command;

fn unit(name: &str) -> String {
    let path = demofleet_tests::workspace_root().join("dist/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `[Service]` section's settings.
fn service_settings(text: &str) -> HashMap<String, String> {
    let mut section = "";
    let mut settings = HashMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Service]" {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
            settings.insert(key.to_string(), value.to_string());
        }
    }
    settings
}

/// `systemd-analyze verify` on the unit, with its program (a path) swapped for one that
/// exists here.
fn verify(name: &str, text: &str, program: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace(program, "/bin/true")).unwrap();
    let output = demofleet_tests::command::output(
        Command::new("systemd-analyze").arg("verify").arg(&path),
        demofleet_tests::command::QUICK,
    )
    .expect("systemd-analyze runs");
    let complaints = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "{name}: {complaints}");
}

#[test]
fn the_units_verify_and_run_the_daemons_unprivileged() {
    for (name, binary) in
        [("demofleet-agent.service", "demofleet-agent"), ("demofleet-controller.service", "demofleet-controller")]
    {
        let text = unit(name);
        verify(name, &text, &format!("/usr/local/bin/{binary}"));
        let settings = service_settings(&text);
        let setting = |key: &str| settings.get(key).map(String::as_str);
        assert_eq!(setting("ExecStart"), Some(format!("/usr/local/bin/{binary}").as_str()), "{name}");
        assert_eq!(setting("User"), Some("demofleet"), "{name}: never root");
        assert_eq!(setting("NoNewPrivileges"), Some("yes"), "{name}");
        assert_eq!(setting("CapabilityBoundingSet"), Some(""), "{name}: no capabilities");
        assert_eq!(setting("ProtectSystem"), Some("strict"), "{name}");
        assert_eq!(setting("KillSignal"), Some("SIGTERM"), "{name}: graceful stop");
        assert!(setting("EnvironmentFile").is_some_and(|f| f.starts_with("/etc/demofleet/")), "{name}");
    }
    let agent = service_settings(&unit("demofleet-agent.service"));
    assert_eq!(agent["SupplementaryGroups"], "docker", "Docker through its socket's group");
    assert_eq!(agent["ReadWritePaths"], "/srv/demos", "writes only its demo folder");
    let agent_unit = unit("demofleet-agent.service");
    for line in [
        "Wants=network-online.target demofleet-firewall.service",
        "After=network-online.target docker.service demofleet-firewall.service",
    ] {
        assert!(agent_unit.lines().any(|l| l == line), "the agent starts after the firewall policy: {line}");
    }
}

/// The firewall policy's unit: applied as root once the Docker Engine runs, again when it
/// restarts, removed when stopped; the script it runs is the repository's.
#[test]
fn the_firewall_unit_applies_the_policy_after_docker() {
    let name = "demofleet-firewall.service";
    let text = unit(name);
    let script = "/usr/local/sbin/demofleet-firewall";
    verify(name, &text, script);
    let settings = service_settings(&text);
    assert_eq!(settings["ExecStart"], format!("{script} apply"));
    assert_eq!(settings["ExecStop"], format!("{script} remove"));
    assert_eq!(settings["Type"], "oneshot");
    assert_eq!(settings["RemainAfterExit"], "yes");
    for line in ["After=docker.service", "PartOf=docker.service", "WantedBy=multi-user.target docker.service"] {
        assert!(text.lines().any(|l| l == line), "{name}: {line}");
    }
    let shipped = demofleet_tests::workspace_root().join("dist/firewall/demofleet-firewall");
    let check =
        demofleet_tests::command::output(Command::new("bash").arg("-n").arg(&shipped), demofleet_tests::command::QUICK)
            .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}
