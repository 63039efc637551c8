//! The control plane in containers (issue 9; the replica count and broker cluster settings of
//! issue 11): every compose file in the repository passes `docker-compose config`; each
//! question of the Rancher template feeds exactly its own setting; no secret is written in a
//! compose file or baked into an image; and the root `docker-compose.yml`, with the images
//! `scripts/images` builds here (no registry), starts two controller replicas behind the load
//! balancer that answer `/readyz`, take a signed webhook and count it in `/metrics`, while
//! agents' ports (RabbitMQ, its management API, NATS) answer on the host and `pg_dump` backs
//! the database up. The stack is taken down with its volumes whatever happens.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use demofleet_tests::command;
use demofleet_tests::fake_github::app_key_pair;
use demofleet_tests::fixtures::sign;
use demofleet_tests::services::free_port;
use demofleet_tests::wait;
use demofleet_tests::workspace_root;
use serde_json::Value;

const READY_DEADLINE: Duration = Duration::from_secs(240);
/// The tag of the controller image the test builds, apart from an operator's `local`.
const IMAGE_TAG: &str = "test";

/// Every compose file in the repository (`docker-compose*.yml`), outside hidden folders and
/// build output.
fn compose_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    walk(&path, out);
                }
            } else if name.starts_with("docker-compose") && (name.ends_with(".yml") || name.ends_with(".yaml")) {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&workspace_root(), &mut files);
    files.sort();
    files
}

fn root_compose() -> PathBuf {
    workspace_root().join("docker-compose.yml")
}

fn rancher_dir() -> PathBuf {
    workspace_root().join("rancher/templates/demofleet/0")
}

/// `docker-compose` on `file` as project `project`, with exactly the variables `vars` (none of
/// this process's `DEMOFLEET_*` settings, no `.env` file).
fn docker_compose(file: &Path, project: &str, vars: &BTreeMap<String, String>, empty_env_file: &Path) -> Command {
    let mut command = Command::new("docker-compose");
    command
        .arg("--project-name")
        .arg(project)
        .arg("--file")
        .arg(file)
        .arg("--env-file")
        .arg(empty_env_file)
        .args(["--ansi", "never"])
        .stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("DEMOFLEET_") || key.starts_with("COMPOSE_") {
            command.env_remove(&*key);
        }
    }
    command.envs(vars);
    command
}

/// Runs `command`, asserting it succeeds within [`command::SLOW`]; its standard output.
fn run(what: &str, command: &mut Command) -> String {
    command::run(what, command, command::SLOW)
}

/// A YAML document as JSON, read by the YAML library docker-compose itself uses (PyYAML).
fn yaml(text: &str) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML that does not parse: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every scalar of `value` with its path (`services.lb.ports[0]`), as text.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                leaves(value, &path, out);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                leaves(value, &format!("{path}[{i}]"), out);
            }
        }
        Value::String(text) => out.push((path.to_string(), text.clone())),
        Value::Null => {}
        other => out.push((path.to_string(), other.to_string())),
    }
}

/// A variable reference in a compose file: `${NAME}`, `${NAME:-default}`, `${NAME:?message}`.
#[derive(Debug)]
struct Reference {
    name: String,
    /// What follows the name (`:-default`, `:?message`), if anything.
    rest: String,
}

fn references(text: &str) -> Vec<Reference> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let end = after.find('}').unwrap_or_else(|| panic!("an unclosed ${{ in: {rest}"));
        let inner = &after[..end];
        let name_end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(inner.len());
        found.push(Reference { name: inner[..name_end].to_string(), rest: inner[name_end..].to_string() });
        rest = &after[end + 1..];
    }
    found
}

/// Whether `value` is exactly one variable reference.
fn is_one_reference(value: &str) -> bool {
    value.starts_with("${") && value.ends_with('}') && references(value).len() == 1
}

/// A secret's value in a compose file must come from outside: a reference with no default.
fn assert_secret_from_outside(file: &Path, what: &str, value: &str) {
    assert!(
        is_one_reference(value),
        "{}: {what} is written in the file, not taken from a variable: {value}",
        file.display()
    );
    let reference = &references(value)[0];
    assert!(
        reference.rest.is_empty() || reference.rest.starts_with(":?") || reference.rest.starts_with('?'),
        "{}: {what} has a default value written in the file: {value}",
        file.display()
    );
}

/// No secret is written in a compose file: every environment entry that names a password,
/// secret, token or key, and the password of every URL, is a variable without a default.
fn assert_no_committed_secret(file: &Path) {
    let raw = yaml(&std::fs::read_to_string(file).unwrap());
    let services = raw["services"].as_object().unwrap_or_else(|| panic!("{}: no services", file.display()));
    for (service, definition) in services {
        let environment: Vec<(String, String)> = match &definition["environment"] {
            Value::Object(map) => {
                map.iter().map(|(k, v)| (k.clone(), v.as_str().map_or(v.to_string(), String::from))).collect()
            }
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
                .collect(),
            _ => Vec::new(),
        };
        for (key, value) in environment {
            let what = format!("{service}'s {key}");
            let upper = key.to_ascii_uppercase();
            let secret = ["PASS", "SECRET", "TOKEN", "PRIVATE"].iter().any(|word| upper.contains(word))
                || upper.ends_with("_KEY");
            if secret && !upper.ends_with("_FILE") {
                assert_secret_from_outside(file, &what, &value);
            } else if !is_one_reference(&value) {
                if let Some((_, after_scheme)) = value.split_once("://") {
                    if let Some((userinfo, _)) = after_scheme.rsplit_once('@') {
                        if let Some((_, password)) = userinfo.split_once(':') {
                            assert_secret_from_outside(file, &format!("the password in {what}"), password);
                        }
                    }
                }
            }
        }
    }
}

/// What each question of the Rancher template feeds: paths in `docker-compose.yml` after
/// `docker-compose config` (which writes ports in their long form), and in
/// `rancher-compose.yml`. Exactly these, nothing more. (The load balancer listens inside on
/// the port it publishes, as Rancher's does.)
const QUESTIONS: &[(&str, &[&str])] = &[
    ("webhook_secret", &["docker-compose.yml services.controller.environment.DEMOFLEET_WEBHOOK_SECRET"]),
    ("base_domain", &["docker-compose.yml services.controller.environment.DEMOFLEET_BASE_DOMAIN"]),
    ("public_url", &["docker-compose.yml services.controller.environment.DEMOFLEET_PUBLIC_URL"]),
    ("github_app_id", &["docker-compose.yml services.controller.environment.DEMOFLEET_GITHUB_APP_ID"]),
    ("github_app_key", &["docker-compose.yml services.controller.environment.DEMOFLEET_GITHUB_APP_KEY"]),
    ("oidc_issuer", &["docker-compose.yml services.controller.environment.DEMOFLEET_OIDC_ISSUER"]),
    ("oidc_client_id", &["docker-compose.yml services.controller.environment.DEMOFLEET_OIDC_CLIENT_ID"]),
    ("oidc_client_secret", &["docker-compose.yml services.controller.environment.DEMOFLEET_OIDC_CLIENT_SECRET"]),
    ("allow_domains", &["docker-compose.yml services.controller.environment.DEMOFLEET_ALLOW_DOMAINS"]),
    ("allow_emails", &["docker-compose.yml services.controller.environment.DEMOFLEET_ALLOW_EMAILS"]),
    (
        "http_port",
        &[
            "docker-compose.yml services.lb.ports[0].published",
            "docker-compose.yml services.lb.ports[0].target",
            "rancher-compose.yml services.lb.lb_config.port_rules[0].source_port",
        ],
    ),
    (
        "edge_port",
        &[
            "docker-compose.yml services.lb.ports[1].published",
            "docker-compose.yml services.lb.ports[1].target",
            "rancher-compose.yml services.lb.lb_config.port_rules[1].source_port",
        ],
    ),
    ("controller_scale", &["rancher-compose.yml services.controller.scale"]),
    (
        "postgres_password",
        &[
            "docker-compose.yml services.controller.environment.DEMOFLEET_DATABASE_URL",
            "docker-compose.yml services.postgres.environment.POSTGRES_PASSWORD",
        ],
    ),
    ("amqp_password", &["docker-compose.yml services.rabbitmq.environment.RABBITMQ_DEFAULT_PASS"]),
    ("amqp_urls", &["docker-compose.yml services.controller.environment.DEMOFLEET_AMQP_URL"]),
    ("amqp_quorum_queues", &["docker-compose.yml services.controller.environment.DEMOFLEET_AMQP_QUORUM_QUEUES"]),
    ("amqp_port", &["docker-compose.yml services.rabbitmq.ports[0].published"]),
    ("nats_urls", &["docker-compose.yml services.controller.environment.DEMOFLEET_NATS_URL"]),
    ("nats_port", &["docker-compose.yml services.nats.ports[0].published"]),
];

/// Questions whose answers are secrets: asked as passwords (the App key as a multi-line
/// answer), with no default.
const SECRET_QUESTIONS: &[&str] = &["webhook_secret", "oidc_client_secret", "postgres_password", "amqp_password"];

/// The names of the variables `file` refers to (outside comments).
fn variables(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
    let names: BTreeSet<String> = references(&code.join("\n")).into_iter().map(|r| r.name).collect();
    assert!(!names.contains(""), "{}: a ${{}} without a variable name", file.display());
    names
}

/// A value for each of `names`, unique to it: a number for ports and counts (`int` questions,
/// and the root file's `*_PORT` and `*_REPLICAS`), a marker otherwise (but an address for an
/// `*_ADDRESS`, which appears in every published port, and a relative path for a `*_DIR`).
fn markers(names: &BTreeSet<String>, int_names: &BTreeSet<String>) -> BTreeMap<String, String> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let numeric = int_names.contains(name) || name.ends_with("_PORT") || name.ends_with("_REPLICAS");
            let value = if numeric {
                (31000 + i).to_string()
            } else if name.ends_with("_ADDRESS") {
                "127.0.0.1".to_string()
            } else if name.ends_with("_DIR") {
                format!("./m{i}x-{}", name.to_ascii_lowercase())
            } else {
                format!("m{i}x-{}", name.to_ascii_lowercase())
            };
            (name.clone(), value)
        })
        .collect()
}

#[test]
fn compose_files_are_valid_and_hold_no_secret() {
    let _time_limit = demofleet_tests::time_limit::start();
    run(
        "scripts/images --tools-only (docker-compose)",
        Command::new(workspace_root().join("scripts/images")).arg("--tools-only").stdin(Stdio::null()),
    );
    let files = compose_files();
    for expected in [root_compose(), rancher_dir().join("docker-compose.yml")] {
        assert!(files.contains(&expected), "{} is missing (found {files:?})", expected.display());
    }
    let temp = tempfile::tempdir().unwrap();
    let empty_env = temp.path().join("empty.env");
    std::fs::write(&empty_env, "").unwrap();

    let catalog = yaml(&std::fs::read_to_string(rancher_dir().join("rancher-compose.yml")).unwrap());
    let questions = catalog["catalog"]["questions"].as_array().expect(".catalog.questions in rancher-compose.yml");
    let int_names: BTreeSet<String> =
        questions.iter().filter(|q| q["type"] == "int").map(|q| q["variable"].as_str().unwrap().to_string()).collect();

    for file in &files {
        assert_no_committed_secret(file);
        let vars = markers(&variables(file), &int_names);
        run(
            &format!("docker-compose config -q on {}", file.display()),
            docker_compose(file, "demofleetconfig", &vars, &empty_env).args(["config", "-q"]),
        );
    }

    // Without its required settings, the root file says which is missing.
    let out = docker_compose(&root_compose(), "demofleetconfig", &BTreeMap::new(), &empty_env)
        .args(["config", "-q"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the root compose file is valid without its passwords");
    assert!(stderr.contains("set DEMOFLEET_PG_PASSWORD"), "no clear error for a missing password: {stderr}");

    // The Rancher questions: each one's answer lands in its own setting and nowhere else.
    let asked: BTreeSet<&str> =
        questions.iter().map(|q| q["variable"].as_str().expect("a question's variable")).collect();
    let expected: BTreeSet<&str> = QUESTIONS.iter().map(|(name, _)| *name).collect();
    assert_eq!(asked, expected, "the template's questions and the settings they must feed");
    for question in questions {
        let name = question["variable"].as_str().unwrap();
        assert!(question["label"].as_str().is_some_and(|l| !l.is_empty()), "question {name} has no label");
        if SECRET_QUESTIONS.contains(&name) {
            assert_eq!(question["type"], "password", "the secret question {name} is not asked as a password");
            assert!(question.get("default").is_none_or(|d| d == ""), "the secret question {name} has a default");
        }
        if let Some(default) = question.get("default") {
            match question["type"].as_str() {
                Some("int") => assert!(default.is_u64(), "question {name}: default {default} is not a number"),
                Some("boolean") => {
                    assert!(default.is_boolean(), "question {name}: default {default} is not true or false")
                }
                _ => {}
            }
        }
    }
    assert_eq!(catalog["services"]["controller"]["scale"], "${controller_scale}");

    // One answer per question, the same in both files.
    let template = rancher_dir().join("docker-compose.yml");
    let rancher_compose_file = rancher_dir().join("rancher-compose.yml");
    let used: BTreeSet<String> = variables(&template).union(&variables(&rancher_compose_file)).cloned().collect();
    let unasked: Vec<&String> = used.iter().filter(|name| !asked.contains(name.as_str())).collect();
    assert!(unasked.is_empty(), "the Rancher template uses variables no question asks: {unasked:?}");
    let vars = markers(&used, &int_names);
    let resolved = run(
        "docker-compose config on the Rancher template",
        docker_compose(&template, "demofleetconfig", &vars, &empty_env).arg("config"),
    );
    let mut found = Vec::new();
    leaves(&yaml(&resolved), "", &mut found);
    let mut found: Vec<(String, String)> =
        found.into_iter().map(|(path, value)| (format!("docker-compose.yml {path}"), value)).collect();
    let mut rancher_compose = std::fs::read_to_string(&rancher_compose_file).unwrap();
    for (name, marker) in &vars {
        rancher_compose = rancher_compose.replace(&format!("${{{name}}}"), marker);
    }
    let mut rancher = yaml(&rancher_compose);
    rancher.as_object_mut().unwrap().remove("catalog");
    let mut out = Vec::new();
    leaves(&rancher, "", &mut out);
    found.extend(out.into_iter().map(|(path, value)| (format!("rancher-compose.yml {path}"), value)));

    for (name, feeds) in QUESTIONS {
        let marker = vars.get(*name).unwrap_or_else(|| panic!("question {name} feeds nothing"));
        let fed: BTreeSet<&str> =
            found.iter().filter(|(_, value)| value.contains(marker.as_str())).map(|(p, _)| p.as_str()).collect();
        let feeds: BTreeSet<&str> = feeds.iter().copied().collect();
        assert_eq!(fed, feeds, "question {name} must feed exactly its own setting");
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf)).unwrap();
    hex::encode(buf)
}

/// The compose stack of one test run; taken down with its volumes when dropped, its logs
/// printed first if the test is failing.
struct ComposeStack {
    file: PathBuf,
    project: String,
    vars: BTreeMap<String, String>,
    empty_env: PathBuf,
}

impl ComposeStack {
    fn command(&self) -> Command {
        docker_compose(&self.file, &self.project, &self.vars, &self.empty_env)
    }

    fn run(&self, what: &str, args: &[&str]) -> String {
        run(what, self.command().args(args))
    }
}

impl Drop for ComposeStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(out) = self.command().args(["logs", "--tail", "60"]).output() {
                eprintln!("--- compose logs (last lines)\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        match self.command().args(["down", "--volumes", "--remove-orphans", "--timeout", "10"]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("docker-compose down failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("docker-compose down: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_control_plane_serves() {
    let _time_limit = demofleet_tests::time_limit::start();
    run(
        "scripts/images",
        Command::new(workspace_root().join("scripts/images"))
            .args(["--controller-binary", env!("CARGO_BIN_EXE_fleet-controller")])
            .env("DEMOFLEET_IMAGE_TAG", IMAGE_TAG)
            .stdin(Stdio::null()),
    );

    let temp = tempfile::tempdir().unwrap();
    let empty_env = temp.path().join("empty.env");
    std::fs::write(&empty_env, "").unwrap();
    // The secrets folder as an operator makes it: files readable by root only.
    let secrets = temp.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let webhook_secret = random_hex(24);
    let oidc_client_secret = random_hex(24);
    let (key, _) = app_key_pair(temp.path());
    std::fs::write(secrets.join("webhook-secret"), format!("{webhook_secret}\n")).unwrap();
    std::fs::write(secrets.join("oidc-client-secret"), &oidc_client_secret).unwrap();
    std::fs::copy(&key, secrets.join("github-app-key.pem")).unwrap();
    for file in ["webhook-secret", "oidc-client-secret", "github-app-key.pem"] {
        std::fs::set_permissions(secrets.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let app_key = std::fs::read_to_string(&key).unwrap();
    let key_line = app_key.lines().nth(1).expect("a PEM body").to_string();

    let pg_password = random_hex(16);
    let amqp_password = random_hex(16);
    let [http_port, edge_port, amqp_port, management_port, nats_port] = std::array::from_fn(|_| free_port());
    let vars: BTreeMap<String, String> = [
        ("DEMOFLEET_IMAGE_TAG", IMAGE_TAG.to_string()),
        ("DEMOFLEET_PG_PASSWORD", pg_password.clone()),
        ("DEMOFLEET_AMQP_PASSWORD", amqp_password.clone()),
        ("DEMOFLEET_AMQP_URL", format!("amqp://demofleet:{amqp_password}@rabbitmq:5672/demofleet")),
        ("DEMOFLEET_SECRETS_DIR", secrets.to_str().unwrap().to_string()),
        ("DEMOFLEET_CONTROLLER_REPLICAS", "2".to_string()),
        ("DEMOFLEET_BIND_ADDRESS", "127.0.0.1".to_string()),
        ("DEMOFLEET_HTTP_PORT", http_port.to_string()),
        ("DEMOFLEET_EDGE_PORT", edge_port.to_string()),
        ("DEMOFLEET_AMQP_PORT", amqp_port.to_string()),
        ("DEMOFLEET_AMQP_MANAGEMENT_PORT", management_port.to_string()),
        ("DEMOFLEET_NATS_PORT", nats_port.to_string()),
        // The App's key is read and parsed at start; GitHub itself is not asked here.
        ("DEMOFLEET_GITHUB_APP_ID", "4242".to_string()),
        ("DEMOFLEET_GITHUB_API_URL", "http://127.0.0.1:9".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let stack = ComposeStack {
        file: root_compose(),
        project: format!("demofleetcompose{}", random_hex(4)),
        vars,
        empty_env: empty_env.clone(),
    };
    stack.run("docker-compose up", &["up", "--detach", "--no-build"]);

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let base = format!("http://127.0.0.1:{http_port}");
    wait::until("/readyz through the load balancer", READY_DEADLINE, || async {
        let response = http.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;

    // Both replicas serve: the image's health check (/readyz) passes in each.
    let ids: Vec<String> =
        stack.run("docker-compose ps", &["ps", "-q", "controller"]).lines().map(String::from).collect();
    assert_eq!(ids.len(), 2, "two controller replicas: {ids:?}");
    wait::until("both controller replicas healthy", READY_DEADLINE, || async {
        let out = Command::new("docker")
            .args(["inspect", "--format", "{{.State.Health.Status}}"])
            .args(&ids)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().all(|s| s == "healthy").then_some(())
    })
    .await;

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    // A signed webhook is taken (the secret came from the file); a wrongly signed one is not.
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let deliver = |signature: String, delivery: &'static str| {
        http.post(format!("{base}/webhook/github"))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "ping")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", signature)
            .body(body.to_vec())
            .send()
    };
    let response = deliver(sign(&webhook_secret, body), "compose-ping-1").await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    assert_eq!(response.json::<Value>().await.unwrap()["outcome"], "ping");
    let response = deliver(sign("not-the-secret", body), "compose-ping-2").await.unwrap();
    assert_eq!(response.status(), 401);

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == r#"demofleet_webhook_deliveries_total{event="ping",outcome="ping"} 1"#),
        "the delivery is not counted in /metrics:\n{metrics}"
    );

    // What agents on other hosts reach: the broker with its password, and NATS.
    let amqp = format!("amqp://demofleet:{amqp_password}@127.0.0.1:{amqp_port}/demofleet");
    let connection = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .expect("RabbitMQ answers on the published port with the compose password");
    connection.close(0, "done".into()).await.unwrap();
    let overview = http
        .get(format!("http://127.0.0.1:{management_port}/api/overview"))
        .basic_auth("demofleet", Some(&amqp_password))
        .send()
        .await
        .unwrap();
    assert_eq!(overview.status(), 200, "the management API answers user demofleet");
    let nats =
        async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await.expect("NATS answers on the published port");
    nats.flush().await.unwrap();

    // A backup as docs/operations.md says: pg_dump as the superuser, through the local socket.
    let dump = stack.run("pg_dump", &["exec", "-T", "-u", "postgres", "postgres", "pg_dump", "-d", "demofleet"]);
    assert!(dump.contains("CREATE TABLE public.webhook_deliveries"), "no schema in the dump");
    assert!(dump.contains("compose-ping-1"), "the delivery is not in the dump");

    // No secret of this run is in an image: not in its configuration, not in its history.
    let config = yaml(&stack.run("docker-compose config", &["config"]));
    let images: BTreeSet<String> = config["services"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["image"].as_str().expect("every service names an image").to_string())
        .collect();
    assert!(images.iter().all(|i| i.starts_with("demofleet/")), "an image from elsewhere: {images:?}");
    for image in &images {
        let inspect = run("docker image inspect", Command::new("docker").args(["image", "inspect", image]));
        let history = run("docker history", Command::new("docker").args(["history", "--no-trunc", image]));
        for (what, secret) in [
            ("the webhook secret", &webhook_secret),
            ("the OIDC client secret", &oidc_client_secret),
            ("the PostgreSQL password", &pg_password),
            ("the RabbitMQ password", &amqp_password),
            ("the GitHub App key", &key_line),
        ] {
            assert!(
                !inspect.contains(secret.as_str()) && !history.contains(secret.as_str()),
                "{what} is in image {image}"
            );
        }
    }
    drop(stack);
}
