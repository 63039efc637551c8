//! The ansible tools of the virtualenv `scripts/test` prepares (`ensure_ansible` in
//! `scripts/lib.sh`, named by `DEMOFLEET_ANSIBLE_VENV`), run from `ansible/` with their
//! caches and temporary files in a directory of their own, and `site.yml` applied to this
//! machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::command;

const DEFAULT_VENV: &str = "/var/tmp/demofleet-ansible-venv";

pub struct Ansible {
    bin: PathBuf,
    dir: PathBuf,
    temp: TempDir,
}

impl Ansible {
    /// The tools; fails the test, saying how to install them, where they are missing.
    pub fn new() -> Self {
        let venv = std::env::var("DEMOFLEET_ANSIBLE_VENV").unwrap_or_else(|_| DEFAULT_VENV.to_string());
        let bin = PathBuf::from(&venv).join("bin");
        for tool in ["ansible", "ansible-playbook", "ansible-lint"] {
            assert!(
                bin.join(tool).is_file(),
                "{tool} is not installed in the virtualenv {venv} (DEMOFLEET_ANSIBLE_VENV): \
                 scripts/test installs it, or run `source scripts/lib.sh; ensure_ansible`"
            );
        }
        Ansible { bin, dir: crate::workspace_root().join("ansible"), temp: tempfile::tempdir().unwrap() }
    }

    /// `tool` of the virtualenv, run in `ansible/` with nothing of this process's
    /// environment that would change what it does (colours, another virtualenv, the
    /// webhook secret a role would otherwise take).
    pub fn command(&self, tool: &str) -> Command {
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
            .env_remove("VIRTUAL_ENV")
            .env_remove("DEMOFLEET_WEBHOOK_SECRET");
        command
    }

    /// The virtualenv's Python, for `ansible_python_interpreter`.
    pub fn python(&self) -> PathBuf {
        self.bin.join("python")
    }

    /// The tools' own temporary directory, removed with them.
    pub fn temp(&self) -> &Path {
        self.temp.path()
    }

    /// Runs the command, asserting it succeeds within [`command::SLOW`]; its standard output.
    pub fn run(&self, what: &str, command: &mut Command) -> String {
        command::run(what, command, command::SLOW)
    }

    /// Applies `site.yml` to this machine, as the one host of each of `groups`, with `vars`;
    /// ansible-playbook's output.
    pub fn apply(&self, groups: &[&str], vars: &serde_json::Value) -> String {
        let inventory = self.temp.path().join("inventory.ini");
        let host = format!(
            "localhost ansible_connection=local ansible_become=false ansible_python_interpreter={}\n",
            self.python().display()
        );
        let text: String = groups.iter().map(|group| format!("[{group}]\n{host}")).collect();
        std::fs::write(&inventory, text).unwrap();
        let vars_file = self.temp.path().join("vars.json");
        std::fs::write(&vars_file, vars.to_string()).unwrap();
        self.run(
            "ansible-playbook site.yml",
            self.command("ansible-playbook")
                .arg("-i")
                .arg(&inventory)
                .arg("-e")
                .arg(format!("@{}", vars_file.display()))
                .arg("site.yml"),
        )
    }
}

impl Default for Ansible {
    fn default() -> Self {
        Ansible::new()
    }
}

/// The `PLAY RECAP` line of the one host.
pub fn recap(output: &str) -> &str {
    let recap = output.split("PLAY RECAP").nth(1).unwrap_or_else(|| panic!("no PLAY RECAP in:\n{output}"));
    recap.lines().find(|l| l.starts_with("localhost")).unwrap_or_else(|| panic!("no recap for localhost:\n{output}"))
}
