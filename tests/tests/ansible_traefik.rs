//! The ansible side of a Traefik edge: the `traefik` role, applied to a temporary
//! directory, writes a static configuration that polls the controller it is given, has the
//! shape of `dist/traefik/traefik.toml` (which its defaults render exactly), and changes
//! nothing when applied again. That `ansible/site.yml`, its play for the edge included,
//! passes ansible's syntax check and ansible-lint is checked in `ansible_roles`.
//!
//! ansible-core comes from the virtualenv that `scripts/test` prepares
//! ([`demofleet_tests::ansible`]).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use demofleet_tests::ansible::{recap, Ansible};
use demofleet_tests::workspace_root;
use serde_json::json;

fn example() -> toml::Table {
    let path = workspace_root().join("dist/traefik/traefik.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).expect("the example is valid TOML")
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid TOML: {e}\n{text}", path.display()))
}

#[test]
fn the_role_writes_a_configuration_polling_the_controller_and_is_idempotent() {
    let _time_limit = demofleet_tests::time_limit::start();
    let ansible = Ansible::new();
    let config_dir = ansible.temp().join("etc/traefik");
    let data_dir = ansible.temp().join("var/lib/traefik");
    let vars = json!({
        "traefik_controller_url": "http://controller.example.test:9100",
        "traefik_poll_interval": "2s",
        "traefik_acme_email": "edge@example.test",
        "traefik_config_dir": config_dir,
        "traefik_data_dir": data_dir,
        "traefik_install_binary": false,
        "traefik_manage_service": false,
        "traefik_secrets_dir": ansible.temp().join("secrets"),
    });

    let first = ansible.apply(&["traefik"], &vars);
    assert!(recap(&first).contains("failed=0"), "{first}");
    let config = read_toml(&config_dir.join("traefik.toml"));
    let http = &config["providers"]["http"];
    // The token the controller role makes in the same secrets directory, made on first use.
    let token = std::fs::read_to_string(ansible.temp().join("secrets/traefik-token")).unwrap();
    let token = token.split_whitespace().next().unwrap().to_string();
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");
    let endpoint = format!("http://controller.example.test:9100/traefik/dynamic?token={token}");
    assert_eq!(http["endpoint"].as_str(), Some(endpoint.as_str()));
    assert_eq!(http["pollInterval"].as_str(), Some("2s"));
    let acme = &config["certificatesResolvers"]["letsencrypt"]["acme"];
    assert_eq!(acme["email"].as_str(), Some("edge@example.test"));
    let storage = data_dir.join("acme.json");
    assert_eq!(acme["storage"].as_str(), storage.to_str());
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the certificates' keys are Traefik's alone");

    // The example with these values put in: the same keys, tables and everything else.
    let mut expected = example();
    let http = expected["providers"]["http"].as_table_mut().unwrap();
    http["endpoint"] = endpoint.into();
    http["pollInterval"] = "2s".into();
    let acme = expected["certificatesResolvers"]["letsencrypt"]["acme"].as_table_mut().unwrap();
    acme["email"] = "edge@example.test".into();
    acme["storage"] = storage.to_str().unwrap().into();
    assert_eq!(config, expected, "the role's configuration follows dist/traefik/traefik.toml");

    let second = ansible.apply(&["traefik"], &vars);
    let line = recap(&second);
    assert!(line.contains("changed=0") && line.contains("failed=0"), "a second run changes nothing:\n{second}");
}

#[test]
fn the_role_defaults_render_the_example_configuration() {
    let _time_limit = demofleet_tests::time_limit::start();
    let ansible = Ansible::new();
    let rendered = ansible.temp().join("traefik.toml");
    let defaults = workspace_root().join("ansible/roles/traefik/defaults/main.yml");
    ansible.run(
        "the template with the role's defaults",
        ansible
            .command("ansible")
            .args(["localhost", "-c", "local", "-m", "ansible.builtin.template", "-a"])
            .arg(format!("src=roles/traefik/templates/traefik.toml.j2 dest={}", rendered.display()))
            .arg("-e")
            .arg(format!("@{}", defaults.display()))
            // The example's placeholder, instead of a token made under the playbook's directory.
            .args(["-e", "traefik_controller_token=change-me"])
            .arg("-e")
            .arg(format!("ansible_python_interpreter={}", ansible.python().display())),
    );
    assert_eq!(read_toml(&rendered), example(), "dist/traefik/traefik.toml is what the role writes by default");
}
