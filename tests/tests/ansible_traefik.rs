//! The ansible side of a Traefik edge: `ansible/site.yml` passes ansible's syntax check and
//! ansible-lint, and the `traefik` role, applied to a temporary directory, writes a static
//! configuration that polls the controller it is given, has the shape of
//! `dist/traefik/traefik.toml` (which its defaults render exactly), and changes nothing when
//! applied again.
//!
//! ansible-core and ansible-lint come from the virtualenv that `scripts/test` prepares
//! (`ensure_ansible` in `scripts/lib.sh`), named by `DEMOFLEET_ANSIBLE_VENV`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::json;
use tempfile::TempDir;

const DEFAULT_VENV: &str = "/var/tmp/demofleet-ansible-venv";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn example() -> toml::Table {
    let path = repo().join("dist/traefik/traefik.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).expect("the example is valid TOML")
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid TOML: {e}\n{text}", path.display()))
}

/// The ansible tools, run from `ansible/` with their caches and temporary files in a
/// directory of their own.
struct Ansible {
    bin: PathBuf,
    dir: PathBuf,
    temp: TempDir,
}

impl Ansible {
    fn new() -> Self {
        let venv = std::env::var("DEMOFLEET_ANSIBLE_VENV").unwrap_or_else(|_| DEFAULT_VENV.to_string());
        let bin = PathBuf::from(&venv).join("bin");
        for tool in ["ansible", "ansible-playbook", "ansible-lint"] {
            assert!(
                bin.join(tool).is_file(),
                "{tool} is not installed in the virtualenv {venv} (DEMOFLEET_ANSIBLE_VENV): \
                 scripts/test installs it, or run `source scripts/lib.sh; ensure_ansible`"
            );
        }
        Ansible { bin, dir: repo().join("ansible"), temp: tempfile::tempdir().unwrap() }
    }

    fn command(&self, tool: &str) -> Command {
        let temp = self.temp.path();
        let path = std::env::join_paths(
            std::iter::once(self.bin.clone())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        let mut command = Command::new(self.bin.join(tool));
        command
            .current_dir(&self.dir)
            .env("PATH", path)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_HOME", temp.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", temp.join("local-tmp"))
            .env("ANSIBLE_REMOTE_TEMP", temp.join("remote-tmp"))
            .env("XDG_CACHE_HOME", temp.join("cache"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("NO_COLOR", "1")
            .env_remove("ANSIBLE_FORCE_COLOR")
            .env_remove("VIRTUAL_ENV");
        command
    }

    /// Runs the command, asserting it succeeds; its standard output.
    fn run(&self, what: &str, command: &mut Command) -> String {
        let Output { status, stdout, stderr } = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        assert!(status.success(), "{what} failed ({status}):\n{stdout}\n{}", String::from_utf8_lossy(&stderr));
        stdout
    }

    /// Applies `site.yml` to this machine, as the one host of the `traefik` group, with `vars`.
    fn apply(&self, vars: &serde_json::Value) -> String {
        let inventory = self.temp.path().join("inventory.ini");
        let python = self.bin.join("python");
        std::fs::write(
            &inventory,
            format!(
                "[traefik]\nlocalhost ansible_connection=local ansible_become=false ansible_python_interpreter={}\n",
                python.display()
            ),
        )
        .unwrap();
        self.run(
            "ansible-playbook site.yml",
            self.command("ansible-playbook").arg("-i").arg(&inventory).arg("-e").arg(vars.to_string()).arg("site.yml"),
        )
    }
}

/// The `PLAY RECAP` line of the one host.
fn recap(output: &str) -> &str {
    let recap = output.split("PLAY RECAP").nth(1).unwrap_or_else(|| panic!("no PLAY RECAP in:\n{output}"));
    recap.lines().find(|l| l.starts_with("localhost")).unwrap_or_else(|| panic!("no recap for localhost:\n{output}"))
}

#[test]
fn the_playbook_passes_the_syntax_check_and_ansible_lint() {
    let _time_limit = demofleet_tests::time_limit::start();
    let ansible = Ansible::new();
    ansible.run(
        "ansible-playbook --syntax-check",
        ansible.command("ansible-playbook").args(["--syntax-check", "-i", "inventory.example.ini", "site.yml"]),
    );
    // Settings (profile, offline) from ansible/.ansible-lint.
    ansible.run("ansible-lint", &mut ansible.command("ansible-lint"));
}

#[test]
fn the_role_writes_a_configuration_polling_the_controller_and_is_idempotent() {
    let _time_limit = demofleet_tests::time_limit::start();
    let ansible = Ansible::new();
    let config_dir = ansible.temp.path().join("etc/traefik");
    let data_dir = ansible.temp.path().join("var/lib/traefik");
    let vars = json!({
        "traefik_controller_url": "http://controller.example.test:9100",
        "traefik_poll_interval": "2s",
        "traefik_acme_email": "edge@example.test",
        "traefik_config_dir": config_dir,
        "traefik_data_dir": data_dir,
        "traefik_install_binary": false,
        "traefik_manage_service": false,
        "traefik_secrets_dir": ansible.temp.path().join("secrets"),
    });

    let first = ansible.apply(&vars);
    assert!(recap(&first).contains("failed=0"), "{first}");
    let config = read_toml(&config_dir.join("traefik.toml"));
    let http = &config["providers"]["http"];
    // The token the controller role makes in the same secrets directory, made on first use.
    let token = std::fs::read_to_string(ansible.temp.path().join("secrets/traefik-token")).unwrap();
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

    let second = ansible.apply(&vars);
    let line = recap(&second);
    assert!(line.contains("changed=0") && line.contains("failed=0"), "a second run changes nothing:\n{second}");
}

#[test]
fn the_role_defaults_render_the_example_configuration() {
    let _time_limit = demofleet_tests::time_limit::start();
    let ansible = Ansible::new();
    let rendered = ansible.temp.path().join("traefik.toml");
    let defaults = ansible.dir.join("roles/traefik/defaults/main.yml");
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
            .arg(format!("ansible_python_interpreter={}", ansible.bin.join("python").display())),
    );
    assert_eq!(read_toml(&rendered), example(), "dist/traefik/traefik.toml is what the role writes by default");
}
