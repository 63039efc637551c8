//! Compose mode (issue 20, point 4): a repository whose `.demofleet.toml` names a compose
//! file runs as several containers, a web service and PostgreSQL built from the repository
//! (`FROM demofleet/postgres:15`, made by `scripts/images --only-postgres`; no registry). The
//! demo runs, its seed fills the database once (its output in the demo's kept log); a push
//! keeps the data and does not seed again; a push asking for `reset = "on_push"` starts from
//! fresh data, seeded for the new commit. The repository's secrets reach the services (the
//! database's password) and appear in no API answer, no controller or agent log and nowhere
//! in the database in clear. Closing the pull request removes every container, volume and
//! network of the demo, while a compose project of someone else's on the same engine (the
//! real `docker-compose`) keeps its container, volume and network. Compose files asking for
//! privileges (`privileged`, `cap_add`, `devices`, `pid`, `network_mode`, a host bind mount)
//! are refused at the build step, naming the key. An idle compose demo sleeps whole (every
//! container stopped) and a visit wakes it whole.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use demofleet_tests::command;
use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::stack::{Stack, StackOptions};
use demofleet_tests::wait;
use demofleet_tests::workspace_root;

/// For a demo to build and run: three images FROM the local PostgreSQL image, a database
/// made by `initdb`, a seed.
const DEADLINE: Duration = Duration::from_secs(300);
/// The image the fixture's services build from.
const POSTGRES_IMAGE: &str = "demofleet/postgres:15";

/// Build `demofleet/postgres:15` (and the Debian image under it) with `scripts/images`,
/// once per run of this test binary: its tests share it.
fn ensure_postgres_image() {
    static BUILT: Mutex<bool> = Mutex::new(false);
    // A test that failed building leaves the next one to try again and say why.
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*built {
        command::run(
            "scripts/images --only-postgres",
            Command::new(workspace_root().join("scripts/images")).arg("--only-postgres"),
            // On a fresh machine, debootstrap and PostgreSQL's packages (about a minute and a half here).
            command::SLOW,
        );
        *built = true;
    }
    docker(&["image", "inspect", "--format", "{{.Id}}", POSTGRES_IMAGE]);
}

/// `docker ARGS`: its output, trimmed, or what went wrong.
fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = command::output(Command::new("docker").args(args), command::DOCKER).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker ARGS`, which must succeed: its output, trimmed.
fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A stack that keeps repository secrets, its controller and agent run as processes.
async fn start_keeping_secrets(keys: &Path) -> Stack {
    let (controller, agent) = (env!("CARGO_BIN_EXE_fleet-controller"), env!("CARGO_BIN_EXE_fleet-agent"));
    Stack::start_keeping_secrets(keys, controller, agent).await
}

fn files(list: &[(String, String)]) -> Vec<(&str, &str)> {
    list.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect()
}

fn new_repo(stack: &Stack, prefix: &str) -> FixtureRepo {
    let name = format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..8]);
    FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &name)
}

// The fixture: examples/compose-notes, a web service whose CGI script lists the notes
// PostgreSQL holds, a seed writing the first note.

/// A file of examples/compose-notes.
fn example(path: &str) -> String {
    let file = workspace_root().join("examples/compose-notes").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The example's `.demofleet.toml`, with `reset = "on_push"` if asked.
fn demofleet_toml(reset_on_push: bool) -> String {
    let toml = example(".demofleet.toml");
    if !reset_on_push {
        return toml;
    }
    let with_reset = toml.replacen("health_path = \"/\"\n", "health_path = \"/\"\nreset = \"on_push\"\n", 1);
    assert_ne!(with_reset, toml, "the example's .demofleet.toml names its health path");
    with_reset
}

/// The repository's files: the example's, web's busybox from `base_image`, its front page
/// saying `page`.
fn notes_app(base_image: &str, page: &str, reset_on_push: bool) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = ["compose.yaml", "db/Dockerfile", "db/start.sh", "web/www/cgi-bin/notes"]
        .into_iter()
        .map(|path| (path.to_string(), example(path)))
        .collect();
    files.push((".demofleet.toml".into(), demofleet_toml(reset_on_push)));
    files.push(("web/Dockerfile".into(), example("web/Dockerfile").replace("demofleet/base:busybox", base_image)));
    files.push(("web/www/index.html".into(), format!("<!doctype html><title>notes</title><h1>{page}</h1>\n")));
    files
}

/// Set repository secret `name` through the API; the answer names it and does not show it.
async fn set_secret(stack: &Stack, repo: &FixtureRepo, name: &str, value: &str, seen: &mut Answers) {
    let path = format!("/api/repos/{}/{}/env/{name}", repo.owner, repo.repo);
    let put = stack.put_json(&path, &json!({ "value": value })).await;
    assert_eq!(put.status(), 200, "PUT {path}");
    let answer = put.text().await.unwrap();
    assert!(answer.contains(name), "{answer}");
    seen.0.push((format!("PUT {path}"), answer));
}

/// Deliver the `pull_request` payload `file` (`pull_request.opened.json`…), edited for pull
/// request 2 of `repo` at `sha`: the demo's name and id.
async fn deliver(stack: &Stack, file: &str, repo: &FixtureRepo, sha: &str) -> (String, String) {
    let (_, response) = stack.deliver("pull_request", &fixtures::pull_request(file, repo, sha)).await;
    assert_eq!(response.status(), 202, "{file}");
    let answer: Value = response.json().await.unwrap();
    let id = answer["demo"]["id"].as_str().unwrap_or_else(|| panic!("a demo in {answer}")).to_string();
    (format!("{}-fixture-owner-pr-2", repo.repo), id)
}

/// Wait until the demo runs commit `sha`; it as `/api/demos` lists it.
async fn running_at(stack: &Stack, name: &str, sha: &str) -> Value {
    let demo = wait::until_seen(&format!("demo {name} to run {sha}"), DEADLINE, || async {
        let demo = stack.demo(name).await.ok_or_else(|| "not listed".to_string())?;
        let settled = demo["state"] == "failed" || (demo["state"] == "running" && demo["sha"] == sha);
        if settled {
            Ok(demo)
        } else {
            Err(demo.to_string())
        }
    })
    .await;
    assert_eq!(demo["state"], "running", "demo {name} failed: {demo}");
    demo
}

/// The notes page through the edge: its body, trimmed, once it answers 200.
async fn notes(stack: &Stack, host: &str) -> String {
    wait::until_seen("the notes page to answer", Duration::from_secs(60), || async {
        let (status, body) = stack.edge_get(host, "/cgi-bin/notes").await;
        if status == 200 {
            Ok(body.trim().to_string())
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await
}

/// Every API answer the test read, to look for the secret in.
#[derive(Default)]
struct Answers(Vec<(String, String)>);

impl Answers {
    /// GET `path` (200): its body, kept.
    async fn get(&mut self, stack: &Stack, path: &str) -> String {
        let response = stack.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let text = response.text().await.unwrap();
        self.0.push((path.to_string(), text.clone()));
        text
    }
}

/// Wait until the kept log of the demo's `generation`, step `step`, has a line starting with
/// each of `expected`; the log as `?format=text` gives it.
async fn kept_log(
    stack: &Stack,
    (id, generation, step): (&str, u32, &str),
    expected: &[String],
    seen: &mut Answers,
) -> String {
    let path = format!("/api/demos/{id}/logs?format=text&generation={generation}&step={step}");
    let log = wait::until_seen(&format!("{expected:?} in the {step} log of generation {generation}"), DEADLINE, || {
        let path = path.clone();
        async move {
            let text = stack.get(&path).await.text().await.unwrap_or_default();
            if expected.iter().all(|line| text.lines().any(|l| l.starts_with(line.as_str()))) {
                Ok(text)
            } else {
                Err(text)
            }
        }
    })
    .await;
    seen.0.push((path, log.clone()));
    log
}

/// What `docker <kind> inspect` says of `object` with `template`, if it exists.
fn inspect(kind: &str, object: &str, template: &str) -> Option<String> {
    try_docker(&[kind, "inspect", "--format", template, object]).ok()
}

/// Assert that `object` (a `container`, `volume` or `network`) exists, labelled with the
/// demo's id and, when given, its host.
fn assert_labelled(kind: &str, object: &str, demo_id: &str, host_id: &str) -> Value {
    let template = if kind == "container" { "{{json .Config.Labels}}" } else { "{{json .Labels}}" };
    let labels = inspect(kind, object, template).unwrap_or_else(|| panic!("no {kind} {object}"));
    let labels: Value = serde_json::from_str(&labels).unwrap_or(Value::Null);
    assert_eq!(labels["run.demo.id"], demo_id, "{kind} {object}: {labels}");
    assert_eq!(labels["run.demo.host"], host_id, "{kind} {object}: {labels}");
    labels
}

fn state_of(container: &str) -> Option<String> {
    inspect("container", container, "{{.State.Status}}")
}

/// The names of the demo's containers (running or not), labelled with its id.
fn containers_of(demo_id: &str) -> BTreeSet<String> {
    let filter = format!("label=run.demo.id={demo_id}");
    docker(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]).lines().map(String::from).collect()
}

/// The volumes the demo's containers mount, anonymous ones (an image's `VOLUME`) too.
fn mounted_volumes(demo_id: &str) -> BTreeSet<String> {
    let template = "{{range .Mounts}}{{if eq .Type \"volume\"}}{{.Name}} {{end}}{{end}}";
    containers_of(demo_id)
        .iter()
        .filter_map(|c| inspect("container", c, template))
        .flat_map(|names| names.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// Every container, volume and network labelled with the demo's id or named after it, as
/// `kind name`.
fn demo_objects(name: &str, demo_id: &str) -> BTreeSet<String> {
    list_demo_objects(name, demo_id).unwrap_or_else(|e| panic!("{e}"))
}

fn list_demo_objects(name: &str, demo_id: &str) -> Result<BTreeSet<String>, String> {
    let mut found = BTreeSet::new();
    let lists: [(&str, &[&str], &str); 3] = [
        ("container", &["ps", "-a"], "{{.Names}}"),
        ("volume", &["volume", "ls"], "{{.Name}}"),
        ("network", &["network", "ls"], "{{.Name}}"),
    ];
    for (kind, list, format) in lists {
        for filter in [format!("label=run.demo.id={demo_id}"), format!("name=demofleet-{name}")] {
            let mut args = list.to_vec();
            args.extend(["--filter", &filter, "--format", format]);
            found.extend(try_docker(&args)?.lines().map(|object| format!("{kind} {object}")));
        }
    }
    Ok(found)
}

/// Removes what a demo left on the engine if its test ends early (on success there is
/// nothing): containers and their images, volumes, networks.
struct Leftovers {
    name: String,
    id: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Ok(objects) = list_demo_objects(&self.name, &self.id) else { return };
        let quiet = |args: &[&str]| {
            let _ = command::output(Command::new("docker").args(args), command::DOCKER);
        };
        for object in &objects {
            if let Some(container) = object.strip_prefix("container ") {
                let image = inspect("container", container, "{{.Image}}");
                quiet(&["rm", "-f", "-v", container]);
                if let Some(image) = image {
                    quiet(&["rmi", &image]);
                }
            }
        }
        for object in &objects {
            if let Some(volume) = object.strip_prefix("volume ") {
                quiet(&["volume", "rm", "-f", volume]);
            } else if let Some(network) = object.strip_prefix("network ") {
                quiet(&["network", "rm", network]);
            }
        }
    }
}

/// A compose project of someone else's on the same engine, started with the real
/// `docker-compose`: one container (`sleep`), a named volume and a network. Taken down with
/// its volumes when dropped.
struct Decoy {
    dir: tempfile::TempDir,
    project: String,
}

impl Decoy {
    fn start(base_image: &str) -> Decoy {
        let dir = tempfile::tempdir().unwrap();
        let file = format!(
            "services:\n  sleeper:\n    image: {base_image}\n    command: [\"sleep\", \"3600\"]\n    volumes:\n      - keep:/keep\n    \
             networks:\n      - side\nvolumes:\n  keep: {{}}\nnetworks:\n  side: {{}}\n"
        );
        std::fs::write(dir.path().join("docker-compose.yml"), file).unwrap();
        let decoy = Decoy { dir, project: format!("dfdecoy{}", &Uuid::new_v4().simple().to_string()[..8]) };
        command::run("docker-compose up (the decoy)", decoy.compose().args(["up", "--detach"]), command::DOCKER);
        decoy
    }

    fn compose(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(self.dir.path().join("docker-compose.yml"))
            .args(["--ansi", "never"])
            .stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("COMPOSE_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Its containers (with their state), volumes and networks, as `kind name [state]`.
    fn objects(&self) -> BTreeSet<String> {
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let list = |kind: &str, args: &[&str]| -> Vec<String> {
            let mut args = args.to_vec();
            args.extend(["--filter", &filter]);
            docker(&args).lines().map(|line| format!("{kind} {line}")).collect()
        };
        let mut found = BTreeSet::new();
        found.extend(list("container", &["ps", "-a", "--format", "{{.Names}} {{.State}}"]));
        found.extend(list("volume", &["volume", "ls", "--format", "{{.Name}}"]));
        found.extend(list("network", &["network", "ls", "--format", "{{.Name}}"]));
        found
    }
}

impl Drop for Decoy {
    fn drop(&mut self) {
        match command::output(self.compose().args(["down", "--volumes", "--timeout", "1"]), command::DOCKER) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("docker-compose down (the decoy): {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("docker-compose down (the decoy): {e}"),
        }
    }
}

/// A client reading the notes page through the edge every 20 ms until stopped, counting
/// each distinct answer (a failure is one too).
struct NotesReader {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<HashMap<String, usize>>,
}

impl NotesReader {
    fn start(edge: std::net::SocketAddr, host: &str) -> NotesReader {
        let running = Arc::new(AtomicBool::new(true));
        let (flag, host) = (running.clone(), host.to_string());
        let task = tokio::spawn(async move {
            let http = demofleet_tests::http_client().build().unwrap();
            let mut seen: HashMap<String, usize> = HashMap::new();
            while flag.load(Ordering::Relaxed) {
                let answer = http.get(format!("http://{edge}/cgi-bin/notes")).header("host", &host).send().await;
                let key = match answer {
                    Ok(r) if r.status() == 200 => r.text().await.unwrap_or_default().trim().to_string(),
                    Ok(r) => format!("status {}", r.status()),
                    Err(err) => format!("error {err}"),
                };
                *seen.entry(key).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        NotesReader { running, task }
    }

    async fn stop(self) -> HashMap<String, usize> {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_demo_keeps_its_data_seeds_once_and_leaves_nothing_behind() {
    let _time_limit = demofleet_tests::time_limit::start();
    ensure_postgres_image();
    let keys = tempfile::tempdir().unwrap();
    let stack = start_keeping_secrets(keys.path()).await;
    let host_id = stack.agents[0].host_id.clone();
    let base = stack.services.base_image.clone();
    let mut seen = Answers::default();

    // The database's password, as repository secrets: PostgreSQL's and psql's.
    let repo = new_repo(&stack, "notes");
    let password = format!("pw-{}", Uuid::new_v4().simple());
    set_secret(&stack, &repo, "POSTGRES_PASSWORD", &password, &mut seen).await;
    set_secret(&stack, &repo, "PGPASSWORD", &password, &mut seen).await;

    // 1. Opened: it runs, seeded for its commit, the seed's output in its log.
    let sha1 = repo.commit("web and db", &files(&notes_app(&base, "first page", false)));
    let (name, id) = deliver(&stack, "pull_request.opened.json", &repo, &sha1).await;
    let _leftovers = Leftovers { name: name.clone(), id: id.clone() };
    let host = format!("{name}.localhost");
    let demo = running_at(&stack, &name, &sha1).await;
    assert_eq!(demo["generation"], 1);
    assert_eq!(notes(&stack, &host).await, format!("seeded {sha1}"), "the seeded note");
    let expected = ["INSERT 0 1".to_string(), format!("seed done for {sha1}")].map(|l| format!("[g1 seed] {l}"));
    kept_log(&stack, (&id, 1, "seed"), &expected, &mut seen).await;
    // The other services' output is in the live log too, each line naming its service.
    kept_log(&stack, (&id, 1, "run"), &["[g1 run] db | ".to_string()], &mut seen).await;

    // Its objects: the routed service under the demo's usual name, the database kept apart
    // from generations, with its volume, on the demo's network.
    let (web1, db) = (format!("demofleet-{name}-g1"), format!("demofleet-{name}--db"));
    assert_labelled("container", &web1, &id, &host_id);
    let db_labels = assert_labelled("container", &db, &id, &host_id);
    // The secrets reach the services, over the example's own [env] password.
    let db_env = inspect("container", &db, "{{json .Config.Env}}").unwrap_or_default();
    assert!(db_env.contains(&format!("\"POSTGRES_PASSWORD={password}\"")), "the secret in the database's environment");
    assert_eq!(db_labels["run.demo.kept"], "true", "the database is kept across generations: {db_labels}");
    assert_eq!((state_of(&web1).as_deref(), state_of(&db).as_deref()), (Some("running"), Some("running")));
    assert_labelled("volume", &format!("demofleet-{name}--data"), &id, &host_id);
    assert_labelled("network", &format!("demofleet-{name}"), &id, &host_id);
    let mut volumes = mounted_volumes(&id);

    // 2. A push changing the web page: generation 2 runs on the same data, not seeded again,
    // and a client reading the notes through the whole update never sees a failure.
    let reader = NotesReader::start(stack.edge_addr, &host);
    let sha2 = repo.commit("a new page", &files(&notes_app(&base, "second page", false)));
    deliver(&stack, "pull_request.synchronize.json", &repo, &sha2).await;
    let demo = running_at(&stack, &name, &sha2).await;
    assert_eq!(demo["generation"], 2);
    let (status, page) = stack.edge_get(&host, "/").await;
    assert_eq!((status, page.contains("second page")), (200, true), "generation 2's page: {page}");
    assert_eq!(notes(&stack, &host).await, format!("seeded {sha1}"), "the data kept, not seeded again");
    let g2_seed = seen.get(&stack, &format!("/api/demos/{id}/logs?format=text&generation=2&step=seed")).await;
    assert_eq!(g2_seed, "", "no seed in generation 2");
    assert_labelled("container", &format!("demofleet-{name}-g2"), &id, &host_id);
    assert_eq!(state_of(&db).as_deref(), Some("running"), "the kept database");
    volumes.extend(mounted_volumes(&id));
    wait::until_seen("generation 1's web container to be retired", DEADLINE, || async {
        state_of(&web1).map_or(Ok(()), Err)
    })
    .await;
    // Each generation's services meet on a network of the generation's own (so that `db`
    // never names another generation's database); the kept database joins each, and the
    // old one goes with its generation.
    assert_labelled("network", &format!("demofleet-{name}-g2"), &id, &host_id);
    wait::until_seen("generation 1's network to go", DEADLINE, || async {
        inspect("network", &format!("demofleet-{name}-g1"), "{{.Name}}").map_or(Ok(()), Err)
    })
    .await;
    let db_networks = inspect("container", &db, "{{range $n, $_ := .NetworkSettings.Networks}}{{$n}} {{end}}");
    assert_eq!(
        db_networks.as_deref().map(str::trim),
        Some(format!("demofleet-{name}-g2").as_str()),
        "the kept database"
    );
    let answers = reader.stop().await;
    let expected = format!("seeded {sha1}");
    assert!(answers.get(&expected).copied().unwrap_or(0) > 0, "the reader read the notes: {answers:?}");
    assert_eq!(answers.len(), 1, "every read during the update answered the kept notes: {answers:?}");

    // 3. A push asking for fresh data on every push: seeded for the new commit only.
    let sha3 = repo.commit("fresh data on every push", &[(".demofleet.toml", &demofleet_toml(true))]);
    deliver(&stack, "pull_request.synchronize.json", &repo, &sha3).await;
    let demo = running_at(&stack, &name, &sha3).await;
    assert_eq!(demo["generation"], 3);
    assert_eq!(notes(&stack, &host).await, format!("seeded {sha3}"), "fresh data, seeded for the third commit");
    let expected = [format!("[g3 seed] seed done for {sha3}")];
    kept_log(&stack, (&id, 3, "seed"), &expected, &mut seen).await;
    assert_labelled("container", &format!("demofleet-{name}-g3"), &id, &host_id);
    assert_labelled("container", &format!("demofleet-{name}-g3--db"), &id, &host_id);
    assert_labelled("volume", &format!("demofleet-{name}-g3--data"), &id, &host_id);
    volumes.extend(mounted_volumes(&id));
    for path in [format!("/api/demos/{id}"), "/api/demos".to_string(), format!("/api/demos/{id}/logs?format=text")] {
        seen.get(&stack, &path).await;
    }

    // 4. Someone else's compose project beside it; the pull request closes: everything of
    // the demo goes, nothing of the other project.
    let decoy = Decoy::start(&base);
    let decoy_before = decoy.objects();
    let kinds: Vec<&str> = decoy_before.iter().map(|o| o.split(' ').next().unwrap()).collect();
    assert_eq!(kinds, ["container", "network", "volume"], "{decoy_before:?}");
    assert!(decoy_before.iter().any(|o| o.starts_with("container ") && o.ends_with(" running")), "{decoy_before:?}");
    assert!(!demo_objects(&name, &id).is_empty());
    deliver(&stack, "pull_request.closed.json", &repo, &sha3).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    let volumes: Vec<String> = volumes.into_iter().collect();
    wait::until_seen("every container, volume and network of the demo to go", Duration::from_secs(60), || async {
        let mut left = demo_objects(&name, &id);
        left.extend(
            volumes.iter().filter(|v| inspect("volume", v, "{{.Name}}").is_some()).map(|v| format!("volume {v}")),
        );
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    assert_eq!(decoy.objects(), decoy_before, "the other compose project is untouched");
    drop(decoy);

    // 5. The secret: in no API answer, no log of the controller or the agent, and nowhere
    // in the database in clear.
    for path in [format!("/api/demos/{id}"), "/api/demos".to_string(), format!("/api/demos/{id}/logs?format=text")] {
        seen.get(&stack, &path).await;
    }
    let env_list = seen.get(&stack, &format!("/api/repos/{}/{}/env", repo.owner, repo.repo)).await;
    assert!(env_list.contains("POSTGRES_PASSWORD") && env_list.contains("PGPASSWORD"), "{env_list}");
    seen.get(&stack, &format!("/api/repos/{}/{}/settings", repo.owner, repo.repo)).await;
    for (path, text) in &seen.0 {
        assert!(!text.contains(&password), "{path} shows the secret: {text}");
    }
    let dump =
        command::output(Command::new("pg_dump").args(["--data-only", stack.database_url()]), Duration::from_secs(60))
            .expect("pg_dump runs");
    assert!(dump.status.success(), "pg_dump: {}", String::from_utf8_lossy(&dump.stderr));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("PGPASSWORD"), "the dump holds the secret's row");
    assert!(!dump.contains(&password), "the database holds the secret in clear");
    let controller_log = std::fs::read_to_string(stack.scratch.path().join("controller.log")).unwrap();
    let agent_log = stack.agent_process_log(0);
    assert!(!agent_log.is_empty() && !controller_log.is_empty(), "both logged");
    assert!(!controller_log.contains(&password), "the controller's log shows the secret");
    assert!(!agent_log.contains(&password), "the agent's log shows the secret");
    stack.stop().await;
}

/// A compose file of one web service (a static site) with `extra` lines in its definition.
fn compose_asking(base_image: &str, extra: &str) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = fixtures::static_site(base_image, "never served")
        .into_iter()
        .map(|(path, content)| (format!("web/{path}"), content))
        .collect();
    list.push(("compose.yaml".into(), format!("services:\n  web:\n    build: ./web\n    ports: [\"8080\"]\n{extra}")));
    list.push((".demofleet.toml".into(), "compose = \"compose.yaml\"\nservice = \"web\"\n".into()));
    list
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_files_asking_for_privileges_are_refused_naming_the_key() {
    let _time_limit = demofleet_tests::time_limit::start();
    let stack = Stack::start(StackOptions::default()).await;
    let base = stack.services.base_image.clone();
    let cases = [
        ("privileged", "    privileged: true\n", vec!["privileged"]),
        ("capadd", "    cap_add: [SYS_ADMIN]\n", vec!["cap_add"]),
        ("devices", "    devices:\n      - /dev/kmsg:/dev/kmsg\n", vec!["devices"]),
        ("pid", "    pid: host\n", vec!["pid"]),
        ("netmode", "    network_mode: host\n", vec!["network_mode"]),
        (
            "bind",
            "    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
            vec!["bind mount", "/var/run/docker.sock"],
        ),
    ];
    let mut opened = Vec::new();
    for (prefix, extra, expected) in cases {
        let repo = new_repo(&stack, prefix);
        let sha = repo.commit(prefix, &files(&compose_asking(&base, extra)));
        let (name, id) = deliver(&stack, "pull_request.opened.json", &repo, &sha).await;
        opened.push((Leftovers { name, id }, expected));
    }
    for (demo, expected) in &opened {
        let name = &demo.name;
        let failed = stack.wait_for_state(name, "failed", DEADLINE).await;
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("build failed: "), "{name}: {error}");
        for key in expected {
            assert!(error.contains(key), "{name}: the error names {key:?}: {error}");
        }
        // Refused once, not tried again, at the build step.
        let detail = stack.get_json(&format!("/api/demos/{}", demo.id)).await;
        let steps = detail["chains"][0]["steps"].as_array().unwrap();
        let failed: Vec<&Value> = steps.iter().filter(|s| s["status"] == "failed").collect();
        assert_eq!(failed.len(), 1, "{name}: {steps:?}");
        assert_eq!((&failed[0]["name"], &failed[0]["attempts"]), (&json!("build"), &json!(1)), "{name}");
        assert_eq!(containers_of(&demo.id), BTreeSet::new(), "{name}: nothing runs");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_compose_demo_sleeps_and_wakes_whole() {
    let _time_limit = demofleet_tests::time_limit::start();
    ensure_postgres_image();
    let keys = tempfile::tempdir().unwrap();
    let stack = start_keeping_secrets(keys.path()).await;
    let base = stack.services.base_image.clone();
    let mut seen = Answers::default();
    let repo = new_repo(&stack, "sleepy");
    let password = format!("pw-{}", Uuid::new_v4().simple());
    set_secret(&stack, &repo, "POSTGRES_PASSWORD", &password, &mut seen).await;
    set_secret(&stack, &repo, "PGPASSWORD", &password, &mut seen).await;
    let put = stack.put_settings(&repo.owner, &repo.repo, &json!({ "idle_sleep_seconds": 6 })).await;
    assert_eq!(put.status(), 200);

    let sha = repo.commit("web and db", &files(&notes_app(&base, "sleepy page", false)));
    let (name, id) = deliver(&stack, "pull_request.opened.json", &repo, &sha).await;
    let _leftovers = Leftovers { name: name.clone(), id: id.clone() };
    let host = format!("{name}.localhost");
    stack.wait_for_state(&name, "running", DEADLINE).await;
    let containers = containers_of(&id);
    let expected: BTreeSet<String> = [format!("demofleet-{name}-g1"), format!("demofleet-{name}--db")].into();
    assert_eq!(containers, expected);

    // Nobody comes: every container of the demo stops, and is kept.
    stack.wait_for_state(&name, "sleeping", DEADLINE).await;
    wait::until_seen("every container of the demo to stop", Duration::from_secs(60), || async {
        let states: Vec<(String, Option<String>)> = containers.iter().map(|c| (c.clone(), state_of(c))).collect();
        if states.iter().all(|(_, s)| s.as_deref() == Some("exited")) {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await;

    // A visit wakes the demo whole: the page reads the database again.
    let response = stack.edge_request(&host, "/").await;
    assert_eq!(response.status(), 503, "the waking-up page");
    wait::until_seen("the notes page to answer again", DEADLINE, || async {
        let (status, body) = stack.edge_get(&host, "/cgi-bin/notes").await;
        if status == 200 && body.trim() == format!("seeded {sha}") {
            Ok(())
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await;
    stack.wait_for_state(&name, "running", DEADLINE).await;
    for container in &containers {
        assert_eq!(state_of(container).as_deref(), Some("running"), "{container} woken");
    }
    assert_eq!(containers_of(&id), containers, "the same containers, woken");

    deliver(&stack, "pull_request.closed.json", &repo, &sha).await;
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    stack.stop().await;
}
