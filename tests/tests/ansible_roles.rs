//! The ansible roles `broker`, `controller` and `agent` (issue 9): `ansible/site.yml` passes
//! ansible's syntax check and ansible-lint; the three roles, applied to this machine
//! (connection local, no systemd, every path under a temporary directory, a RabbitMQ node of
//! the test's own whose `conf.d` is the role's and whose `rabbitmqctl` the role runs), set up
//! the vhost and users, make a private CA, the broker's certificate and the controller's and
//! agent's client certificates (TLS between hosts, issue 18), write RabbitMQ's TLS listener,
//! NATS's configuration with its `tls` block and its users (the controller's, and the agent's
//! allowed only its own subjects), the binaries' environment files, secrets and
//! systemd units, and change nothing when applied again; the agent's broker user has exactly
//! one host's permissions. With RabbitMQ restarted on the role's configuration (it then has
//! no plain-text listener) and NATS started on the role's file, the binaries, started the way
//! the rendered units say with the environment the role wrote, connect over TLS with their
//! certificates and turn a signed `pull_request` webhook into a running demo that answers
//! through the edge.
//!
//! ansible-core and ansible-lint come from the virtualenv that `scripts/test` prepares
//! ([`demofleet_tests::ansible`]).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use demofleet_tests::ansible::{recap, Ansible};
use demofleet_tests::cluster::{RabbitCluster, RabbitOptions};
use demofleet_tests::command;
use demofleet_tests::fake_github::{app_key_pair, FakeGitHub};
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::services::{free_port, nats_prefix, PrivateNats, Services, TestDb};
use demofleet_tests::stack::remove_host_leftovers;
use demofleet_tests::wait;
use serde_json::json;
use uuid::Uuid;

const DEPLOY_DEADLINE: Duration = Duration::from_secs(120);

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// `Key=value` settings of a systemd unit's `[Service]` section (the last of each key).
fn unit_settings(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The variables of an environment file as systemd's `EnvironmentFile=` reads the ones the
/// roles write: `KEY="value"`, with `\"`, `\\`, `\$` and `` \` `` escaped.
fn environment_file(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut vars = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {line}"));
        let quoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
        let value = quoted.unwrap_or_else(|| panic!("{key} is not quoted: {line}"));
        let mut out = String::new();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.push(chars.next().expect("a character after \\"));
            } else {
                assert_ne!(c, '"', "an unescaped quote in {line}");
                out.push(c);
            }
        }
        vars.insert(key.to_string(), out);
    }
    vars
}

/// A daemon started as its unit would start it: `ExecStart` with only `EnvironmentFile`'s
/// variables (and `PATH`, `HOME`); killed when dropped.
struct Daemon {
    name: &'static str,
    child: std::sync::Mutex<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Start `binary` in place of the unit's `ExecStart` program, which must be `expected`.
    fn start(name: &'static str, unit: &Path, expected: &Path, binary: &str, logs: &Path) -> Daemon {
        let settings = unit_settings(unit);
        assert_eq!(settings["ExecStart"], expected.to_str().unwrap(), "{name}'s unit starts the installed binary");
        let env = environment_file(Path::new(&settings["EnvironmentFile"]));
        let log = logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .env("RUST_LOG", "info")
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}"));
        Daemon { name, child: std::sync::Mutex::new(child), log }
    }

    /// Its log so far, for failure messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        format!("--- {} (last lines)\n{}", self.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
    }

    fn assert_running(&self) {
        let status = self.child.lock().unwrap().try_wait().unwrap();
        if let Some(status) = status {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn the_playbook_passes_the_syntax_check_and_ansible_lint() {
    let ansible = Ansible::new();
    let output = ansible.run(
        "ansible-playbook --syntax-check",
        ansible.command("ansible-playbook").args(["--syntax-check", "-i", "inventory.example.ini", "site.yml"]),
    );
    assert!(output.contains("site.yml"), "{output}");
    let plays = ansible.run(
        "ansible-playbook --list-hosts",
        ansible.command("ansible-playbook").args(["--list-hosts", "-i", "inventory.example.ini", "site.yml"]),
    );
    for host in ["broker.internal", "controller.internal", "agent-1.internal", "agent-2.internal", "edge.internal"] {
        assert!(plays.contains(host), "{host} is in a play of site.yml:\n{plays}");
    }
    // Settings (profile, offline) from ansible/.ansible-lint.
    ansible.run("ansible-lint", &mut ansible.command("ansible-lint"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roles_set_up_a_fleet_that_turns_a_signed_webhook_into_a_demo() {
    demofleet_tests::init_tracing();
    let ansible = Ansible::new();
    let services = Services::from_env();
    let test_db = TestDb::create(&services).await;
    let root = tempfile::Builder::new().prefix("demofleet-ansible-").tempdir().unwrap();
    let root_path = root.path().to_path_buf();
    // The broker host's RabbitMQ: a node of the test's own (the machine's is shared), reading
    // the role's conf.d, driven by the role through its rabbitmqctl.
    let conf_d = root_path.join("etc/rabbitmq/conf.d");
    std::fs::create_dir_all(&conf_d).unwrap();
    let options = RabbitOptions { conf_d: Some(conf_d.clone()), ..Default::default() };
    let mut rabbit = tokio::task::spawn_blocking(move || RabbitCluster::start_with(1, &options)).await.unwrap();
    let rabbitmqctl = root_path.join("rabbitmqctl");
    rabbit.write_ctl_script(0, &rabbitmqctl);
    let vhost = format!("ansible-{}", Uuid::new_v4().simple());
    let host_id = format!("host-{}", &Uuid::new_v4().simple().to_string()[..10]);
    let controller_user = format!("{vhost}-controller");
    let agent_user = format!("{vhost}-{host_id}");
    let cleanup = Cleanup { host_id: host_id.clone() };

    // Secrets as files on the "control machine", nowhere in the repository.
    let secrets = root_path.join("control");
    std::fs::create_dir_all(&secrets).unwrap();
    let webhook_secret = format!("secret-{}\"$x\\", Uuid::new_v4().simple());
    std::fs::write(secrets.join("webhook-secret"), format!("{webhook_secret}\n")).unwrap();
    std::fs::write(secrets.join("oidc-client-secret"), format!("oidc-{}", Uuid::new_v4().simple())).unwrap();
    let (app_key, public_key) = app_key_pair(&secrets);
    let token = format!("ghp_{}", Uuid::new_v4().simple());
    let github = FakeGitHub::start(&token, Some(("421337", public_key.as_slice()))).await;

    let repos = root_path.join("repos");
    let prefix = nats_prefix();
    let (listen, edge) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let (amqp_port, nats_port) = (free_port(), free_port());
    let amqp_address = format!("127.0.0.1:{amqp_port}");
    let nats_url = format!("tls://127.0.0.1:{nats_port}");
    let (bin, etc, units) = (root_path.join("usr/local/bin"), root_path.join("etc/demofleet"), root_path.join("units"));
    let demo_dir = root_path.join("srv/demos");
    let broker = json!({
        "broker_install_packages": false,
        "broker_manage_service": false,
        "broker_vhost": vhost,
        "broker_controller_user": controller_user,
        "broker_agent_host_ids": [host_id],
        "broker_agent_user_prefix": format!("{vhost}-"),
        "broker_secrets_dir": secrets,
        "broker_rabbitmqctl": rabbitmqctl,
        "broker_nats_config_file": root_path.join("etc/nats-server.conf"),
        "broker_nats_listen": "127.0.0.1",
        "broker_nats_port": nats_port,
        "broker_nats_prefix": prefix,
        "broker_tls_names": ["127.0.0.1"],
        "broker_rabbitmq_tls_listen": amqp_address,
        "broker_rabbitmq_plain_listen": "",
        "broker_rabbitmq_tls_config_file": conf_d.join("30-demofleet-tls.conf"),
        "broker_rabbitmq_tls_dir": root_path.join("etc/rabbitmq/tls"),
        "broker_nats_tls_dir": root_path.join("etc/nats-server-tls"),
    });
    let controller_vars = json!({
        "controller_install_binary": true,
        "controller_binary_src": env!("CARGO_BIN_EXE_fleet-controller"),
        "controller_manage_service": false,
        "controller_bin_dir": bin,
        "controller_config_dir": etc,
        "controller_unit_dir": units,
        "controller_secrets_dir": secrets,
        "controller_database_url": test_db.url,
        "controller_amqp_user": controller_user,
        "controller_amqp_address": amqp_address,
        "controller_amqp_vhost": vhost,
        "controller_nats_url": nats_url,
        "controller_nats_prefix": prefix,
        "controller_base_domain": "localhost",
        "controller_public_scheme": "http",
        "controller_listen": listen,
        "controller_edge_listen": edge,
        "controller_oidc_issuer": services.oidc_issuer,
        "controller_allow_domains": ["example.com"],
        "controller_webhook_secret_src": secrets.join("webhook-secret"),
        "controller_oidc_client_secret_src": secrets.join("oidc-client-secret"),
        "controller_github_app_id": "421337",
        "controller_github_app_key_src": app_key,
        "controller_extra_env": {
            "DEMOFLEET_GITHUB_API_URL": github.url,
            "DEMOFLEET_GIT_URL": format!("file://{}/{{owner}}/{{repo}}.git", repos.display()),
            "DEMOFLEET_TICK": "500ms",
            "DEMOFLEET_HOST_TIMEOUT": "5s",
        },
    });
    let agent_vars = json!({
        "agent_install_binary": true,
        "agent_binary_src": env!("CARGO_BIN_EXE_fleet-agent"),
        "agent_install_docker": false,
        "agent_manage_service": false,
        "agent_bin_dir": bin,
        "agent_sbin_dir": bin,
        "agent_config_dir": etc,
        "agent_unit_dir": units,
        "agent_demo_dir": demo_dir,
        "agent_secrets_dir": secrets,
        "agent_host_id": host_id,
        "agent_host_address": "127.0.0.1",
        "agent_capacity": 3,
        "agent_amqp_user": agent_user,
        "agent_amqp_address": amqp_address,
        "agent_amqp_vhost": vhost,
        "agent_nats_url": nats_url,
        "agent_nats_prefix": prefix,
        "agent_extra_env": {"DEMOFLEET_HEARTBEAT_INTERVAL": "500ms", "DEMOFLEET_GIT_LOCAL_ROOT": repos},
        "agent_firewall_edge": ["10.0.0.5", "10.0.1.0/24"],
    });
    let mut vars = serde_json::Map::new();
    for part in [broker, controller_vars, agent_vars] {
        vars.extend(part.as_object().unwrap().clone());
    }
    let vars = serde_json::Value::Object(vars);

    let first = ansible.apply(&["brokers", "controller", "agents"], &vars);
    assert!(recap(&first).contains("failed=0"), "{first}");
    let second = ansible.apply(&["brokers", "controller", "agents"], &vars);
    let line = recap(&second);
    assert!(line.contains("changed=0") && line.contains("failed=0"), "a second run changes nothing:\n{second}");
    assert!(!first.contains(&webhook_secret) && !second.contains(&webhook_secret), "no secret in the output");

    // The files: binaries, secrets and environment files readable by their owner only.
    for file in ["controller.env", "agent.env", "github-app-key.pem", "oidc-client-secret"] {
        assert_eq!(mode(&etc.join(file)), 0o600, "{file} is mode 0600");
    }
    assert_eq!(mode(&bin.join("demofleet-controller")), 0o755);
    assert!(demo_dir.is_dir());
    let nats = std::fs::read_to_string(root_path.join("etc/nats-server.conf")).unwrap();
    assert!(nats.contains(&format!("listen: \"127.0.0.1:{nats_port}\"")), "{nats}");
    // NATS users: the controller's, and the agent's allowed only its own subjects.
    assert_eq!(mode(&root_path.join("etc/nats-server.conf")), 0o640, "it holds passwords");
    let secret = |name: &str| {
        let text = std::fs::read_to_string(secrets.join(name)).unwrap();
        text.split_whitespace().next().unwrap().to_string()
    };
    let (agent_nats_password, controller_nats_password) =
        (secret(&format!("nats-agent-{host_id}")), secret("nats-demofleet"));
    let own_subjects = format!(
        "permissions: {{publish: {{allow: [\"{prefix}.host.{host_id}.>\"]}}, subscribe: {{allow: [\"_INBOX.>\"]}}}}"
    );
    assert!(
        nats.contains(&format!("{{user: \"agent-{host_id}\", password: \"{agent_nats_password}\", {own_subjects}}}")),
        "{nats}"
    );
    assert!(nats.contains(&format!("{{user: \"demofleet\", password: \"{controller_nats_password}\"}}")), "{nats}");
    let controller_env = environment_file(&etc.join("controller.env"));
    assert_eq!(controller_env["DEMOFLEET_WEBHOOK_SECRET"], webhook_secret, "read from its file, escaped");
    assert_eq!(controller_env["DEMOFLEET_GITHUB_APP_KEY_FILE"], etc.join("github-app-key.pem").to_str().unwrap());
    assert_eq!(std::fs::read(etc.join("github-app-key.pem")).unwrap(), std::fs::read(&app_key).unwrap());
    assert_eq!(controller_env["DEMOFLEET_OIDC_CLIENT_SECRET_FILE"], etc.join("oidc-client-secret").to_str().unwrap());
    let traefik_token = std::fs::read_to_string(secrets.join("traefik-token")).unwrap();
    assert_eq!(controller_env["DEMOFLEET_TRAEFIK_TOKEN"], traefik_token.split_whitespace().next().unwrap());
    let agent_env = environment_file(&etc.join("agent.env"));
    assert_eq!(agent_env["DEMOFLEET_HOST_ID"], host_id);
    assert_eq!(agent_env["DEMOFLEET_CAPACITY"], "3");
    assert_eq!(agent_env["DEMOFLEET_DEMO_DIR"], demo_dir.to_str().unwrap());
    let agent_password = std::fs::read_to_string(secrets.join(format!("rabbitmq-{agent_user}"))).unwrap();
    let agent_password = agent_password.split_whitespace().next().unwrap().to_string();
    assert_eq!(
        agent_env["DEMOFLEET_AMQP_URL"],
        format!("amqps://{agent_user}:{agent_password}@{amqp_address}/{vhost}"),
        "the agent logs in as its own user, over TLS"
    );
    assert_eq!(
        agent_env["DEMOFLEET_NATS_URL"],
        format!("tls://agent-{host_id}:{agent_nats_password}@127.0.0.1:{nats_port}"),
        "the agent's NATS user"
    );
    assert_eq!(
        controller_env["DEMOFLEET_NATS_URL"],
        format!("tls://demofleet:{controller_nats_password}@127.0.0.1:{nats_port}")
    );
    tls_files_and_settings(&root_path, &secrets, &etc, &host_id);
    let unit = std::fs::read_to_string(units.join("demofleet-agent.service")).unwrap();
    assert!(unit.contains(&format!("ReadWritePaths={}", demo_dir.display())), "{unit}");
    assert!(unit.contains("SupplementaryGroups=docker"), "{unit}");
    // The firewall policy for demo networks: the repository's script, its settings, and a
    // unit the agent's starts after.
    let shipped = std::fs::read(demofleet_tests::workspace_root().join("dist/firewall/demofleet-firewall"));
    assert_eq!(std::fs::read(bin.join("demofleet-firewall")).unwrap(), shipped.unwrap());
    assert_eq!(mode(&bin.join("demofleet-firewall")), 0o755);
    let firewall_env = environment_file(&etc.join("firewall.env"));
    assert_eq!(firewall_env["DEMOFLEET_FIREWALL_EDGE"], "10.0.0.5 10.0.1.0/24");
    let firewall_unit = std::fs::read_to_string(units.join("demofleet-firewall.service")).unwrap();
    assert!(
        firewall_unit.contains(&format!("ExecStart={}/demofleet-firewall apply", bin.display())),
        "{firewall_unit}"
    );
    assert!(unit.contains("After=network-online.target docker.service demofleet-firewall.service"), "{unit}");

    // The agent's user may touch the exchange, the controller's queue and its own queue only.
    let permissions = rabbit.management_get(&format!("/permissions/{vhost}/{agent_user}")).await;
    let permissions = permissions.expect("the agent's permissions");
    let own = format!("demofleet\\.host\\.{host_id}");
    assert_eq!(permissions["configure"], format!("^(demofleet\\.tasks|demofleet\\.controller|{own})$"));
    assert_eq!(permissions["write"], format!("^(demofleet\\.tasks|demofleet\\.controller|{own})$"));
    assert_eq!(permissions["read"], format!("^(demofleet\\.tasks|{own})$"));
    let permissions = rabbit.management_get(&format!("/permissions/{vhost}/{controller_user}")).await;
    let permissions = permissions.expect("the controller's permissions");
    assert_eq!(
        (&permissions["configure"], &permissions["write"], &permissions["read"]),
        (&json!(".*"), &json!(".*"), &json!(".*"))
    );

    // RabbitMQ restarted on the role's configuration, as its handler would: AMQP over TLS
    // only. NATS on the role's file.
    rabbit.kill(0);
    let rabbit = tokio::task::spawn_blocking(move || {
        rabbit.restart(0);
        rabbit
    })
    .await
    .unwrap();
    let overview = rabbit.management_get("/overview").await.expect("the management API");
    let protocols: Vec<&str> =
        overview["listeners"].as_array().unwrap().iter().filter_map(|l| l["protocol"].as_str()).collect();
    assert!(protocols.contains(&"amqp/ssl") && !protocols.contains(&"amqp"), "listeners: {protocols:?}");
    let _nats = PrivateNats::start_from_file(&root_path.join("etc/nats-server.conf"), nats_port, true);

    // Start both the way their units would, with the binaries cargo built.
    let logs = root_path.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let controller = Daemon::start(
        "controller",
        &units.join("demofleet-controller.service"),
        &bin.join("demofleet-controller"),
        env!("CARGO_BIN_EXE_fleet-controller"),
        &logs,
    );
    let plain = demofleet_tests::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let ready = format!("http://{listen}/readyz");
    wait::until("the controller to be ready", Duration::from_secs(60), || async {
        controller.assert_running();
        let response = plain.get(&ready).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let agent = Daemon::start(
        "agent",
        &units.join("demofleet-agent.service"),
        &bin.join("demofleet-agent"),
        env!("CARGO_BIN_EXE_fleet-agent"),
        &logs,
    );

    let db = sqlx::PgPool::connect(&test_db.url).await.unwrap();
    let api_token = demofleet_controller::auth::create_api_token(&db, "tests", "ansible roles test").await.unwrap();
    let api = |path: &str| {
        let request = plain.get(format!("http://{listen}{path}")).bearer_auth(&api_token);
        async move { request.send().await.ok()?.json::<serde_json::Value>().await.ok() }
    };
    wait::until(&format!("host {host_id} in /api/hosts"), Duration::from_secs(30), || async {
        agent.assert_running();
        let hosts = api("/api/hosts").await?;
        hosts.as_array()?.iter().any(|h| h["id"] == host_id.as_str() && h["alive"] == true).then_some(())
    })
    .await;
    // Both over TLS, each with the certificate the role made for it.
    let mut wanted = vec![
        (agent_user.clone(), format!("CN=agent-{host_id}")),
        (controller_user.clone(), "CN=controller-localhost".to_string()),
    ];
    wanted.sort();
    wait::until_seen("the controller and the agent on RabbitMQ over TLS", Duration::from_secs(30), || async {
        let listed = rabbit.management_get(&format!("/vhosts/{vhost}/connections")).await.ok_or("no list")?;
        let mut seen: Vec<(String, String)> = Vec::new();
        for connection in listed.as_array().ok_or("not a list")? {
            if connection["ssl"] != true {
                return Err(format!("a connection without TLS: {connection}"));
            }
            let user = connection["user"].as_str().unwrap_or("?").to_string();
            seen.push((user, connection["peer_cert_subject"].as_str().unwrap_or("?").to_string()));
        }
        seen.sort();
        if seen == wanted {
            Ok(())
        } else {
            Err(format!("{seen:?}, wanted {wanted:?}"))
        }
    })
    .await;

    // A signed pull_request opened webhook becomes a running demo, reachable through the edge.
    let repo_name = format!("ansible-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let fixture = FixtureRepo::create(&repos, "fixture-owner", &repo_name);
    let marker = format!("demo of {repo_name}, deployed by ansible");
    let files = fixtures::static_site(&services.base_image, &marker);
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (*p, c.as_str())).collect();
    let sha = fixture.commit("a demo", &files);
    let body = serde_json::to_vec(&fixtures::pull_request("pull_request.opened.json", &fixture, &sha)).unwrap();
    let response = plain
        .post(format!("http://{listen}/webhook/github"))
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/044aadd")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", Uuid::new_v4().to_string())
        .header("x-hub-signature-256", fixtures::sign(&webhook_secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());

    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = wait::until(&format!("demo {name} to be running"), DEPLOY_DEADLINE, || async {
        controller.assert_running();
        agent.assert_running();
        let demos = api("/api/demos").await?;
        let demo = demos.as_array()?.iter().find(|d| d["name"] == name.as_str())?.clone();
        assert_ne!(demo["state"], "failed", "{demo}\n{}\n{}", controller.log(), agent.log());
        (demo["state"] == "running").then_some(demo)
    })
    .await;
    assert_eq!(demo["host"], host_id.as_str());
    assert!(demo_dir.join(&name).is_dir(), "the clone is in the role's demo directory");
    let page = plain.get(format!("http://{edge}/")).header("host", format!("{name}.localhost")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(&marker), "{page}");

    drop(agent);
    drop(controller);
    db.close().await;
    test_db.drop_db().await;
    drop(cleanup);
}

/// TLS between hosts as the roles set it up: a private CA on the control machine (its key
/// never copied), the broker's certificate for the address clients use, RabbitMQ's TLS
/// listener with no plain one and NATS's `tls` block, both asking for client certificates;
/// the controller's and agent's certificates of their own, their keys readable by the owner
/// only, and the settings naming the files.
fn tls_files_and_settings(root: &Path, secrets: &Path, etc: &Path, host_id: &str) {
    let pki = secrets.join("tls");
    assert_eq!(mode(&pki.join("ca.key")), 0o600, "the CA's key, on the control machine only");
    let ca = pki.join("ca.pem");
    let rabbitmq = std::fs::read_to_string(root.join("etc/rabbitmq/conf.d/30-demofleet-tls.conf")).unwrap();
    for line in ["listeners.tcp = none", "ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = true"]
    {
        assert!(rabbitmq.lines().any(|l| l == line), "{line} in:\n{rabbitmq}");
    }
    let nats = std::fs::read_to_string(root.join("etc/nats-server.conf")).unwrap();
    assert!(nats.contains("tls {") && nats.contains("verify: true"), "{nats}");
    for dir in ["etc/rabbitmq/tls", "etc/nats-server-tls"] {
        let dir = root.join(dir);
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), std::fs::read(&ca).unwrap(), "{}", dir.display());
        assert_eq!(mode(&dir.join("key.pem")), 0o600, "{}", dir.display());
        assert!(certificate_text(&ca, &dir.join("cert.pem")).contains("IP Address:127.0.0.1"), "{}", dir.display());
    }
    assert!(!root.join("etc/rabbitmq/tls/ca.key").exists() && !etc.join("tls/ca.key").exists());
    let controller_env = environment_file(&etc.join("controller.env"));
    let agent_env = environment_file(&etc.join("agent.env"));
    for (env, name) in [(&controller_env, "controller-localhost".to_string()), (&agent_env, format!("agent-{host_id}"))]
    {
        assert_eq!(env["DEMOFLEET_TLS_CA_FILE"], etc.join("tls/ca.pem").to_str().unwrap());
        assert!(env["DEMOFLEET_NATS_URL"].starts_with("tls://"), "{env:?}");
        assert!(!env.contains_key("DEMOFLEET_ALLOW_PLAINTEXT"), "{env:?}");
        let cert = Path::new(&env["DEMOFLEET_TLS_CERT_FILE"]);
        assert_eq!(mode(Path::new(&env["DEMOFLEET_TLS_KEY_FILE"])), 0o600);
        assert!(certificate_text(&ca, cert).contains(&format!("CN = {name}")), "{}", cert.display());
    }
}

/// `cert`, checked against `ca` (`openssl verify`), as `openssl x509 -text` prints it.
fn certificate_text(ca: &Path, cert: &Path) -> String {
    let verify =
        command::output(Command::new("openssl").arg("verify").arg("-CAfile").arg(ca).arg(cert), command::QUICK)
            .unwrap();
    assert!(verify.status.success(), "{} against {}: {verify:?}", cert.display(), ca.display());
    let text =
        command::output(Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(cert), command::QUICK)
            .unwrap();
    String::from_utf8_lossy(&text.stdout).into_owned()
}

/// The demo containers of the test, removed at the end.
struct Cleanup {
    host_id: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_host_leftovers(&self.host_id);
    }
}
