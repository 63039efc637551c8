//! The shared services and each test's private slice of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::Mutex;
use uuid::Uuid;

/// Where the services are: the environment `scripts/test` exports, else the defaults that
/// `scripts/up` creates.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub amqp_url: String,
    pub amqp_management_url: String,
    pub nats_url: String,
    pub base_image: String,
    /// The OpenID provider (oidc-provider-mock) every stack signs people in with.
    pub oidc_issuer: String,
}

impl Services {
    pub fn from_env() -> Services {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        let (pg, amqp) = (machine_password("pg"), machine_password("amqp"));
        Services {
            database_url: var("DEMOFLEET_DATABASE_URL", &format!("postgres://demofleet:{pg}@127.0.0.1:5432/demofleet")),
            amqp_url: var("DEMOFLEET_AMQP_URL", &format!("amqp://demofleet:{amqp}@127.0.0.1:5672/demofleet")),
            amqp_management_url: var(
                "DEMOFLEET_AMQP_MANAGEMENT_URL",
                &format!("http://demofleet:{amqp}@127.0.0.1:15672"),
            ),
            nats_url: var("DEMOFLEET_NATS_URL", "nats://127.0.0.1:4222"),
            base_image: var("DEMOFLEET_BASE_IMAGE", "demofleet/base:busybox"),
            oidc_issuer: var("DEMOFLEET_OIDC_ISSUER", "http://127.0.0.1:9400"),
        }
    }
}

/// The password of the local service `service` (`pg`, `amqp`) that scripts/lib.sh made for
/// this machine (`DEMOFLEET_CREDENTIALS_FILE`), for a test run without its environment.
fn machine_password(service: &str) -> String {
    let file =
        std::env::var("DEMOFLEET_CREDENTIALS_FILE").unwrap_or_else(|_| "/var/lib/demofleet-dev/credentials".into());
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let found = text.lines().find_map(|line| line.strip_prefix(service)?.strip_prefix('='));
    found.unwrap_or("demofleet").to_string()
}

/// Third-party test data kept in the repository: GitHub's payloads and signature test vector,
/// Traefik's schemas (`tests/data/README.md` names their sources and licences).
pub fn test_data_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data"))
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{name}")
}

/// The migrated template of the server at `services.database_url`, made once per migration
/// set (under an advisory lock, since test binaries run side by side).
async fn template(services: &Services) -> String {
    static TEMPLATES: Mutex<BTreeMap<String, String>> = Mutex::const_new(BTreeMap::new());
    let mut templates = TEMPLATES.lock().await;
    if let Some(name) = templates.get(&services.database_url) {
        return name.clone();
    }
    let mut digest = Sha256::new();
    for migration in demofleet_controller::MIGRATOR.iter() {
        digest.update(migration.version.to_le_bytes());
        digest.update(&*migration.checksum);
    }
    let name = format!("demofleet_tmpl_{}", &hex::encode(digest.finalize())[..12]);
    let mut admin = PgConnection::connect(&services.database_url).await.expect("connect to PostgreSQL");
    admin.execute("select pg_advisory_lock(4242)").await.unwrap();
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    if !exists {
        let building = format!("{name}_building");
        admin.execute(format!("drop database if exists {building}").as_str()).await.unwrap();
        admin.execute(format!("create database {building}").as_str()).await.unwrap();
        let mut conn = PgConnection::connect(&with_database(&services.database_url, &building)).await.unwrap();
        demofleet_controller::MIGRATOR.run(&mut conn).await.expect("migrations apply");
        conn.close().await.unwrap();
        admin.execute(format!("alter database {building} rename to {name}").as_str()).await.unwrap();
    }
    admin.execute("select pg_advisory_unlock(4242)").await.unwrap();
    templates.insert(services.database_url.clone(), name.clone());
    name
}

/// A database of this test's own, cloned from the migrated template.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create(services: &Services) -> TestDb {
        let template = template(services).await;
        let name = format!("test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&services.database_url).await.unwrap();
        admin.execute(format!("create database {name} template {template}").as_str()).await.unwrap();
        TestDb { url: with_database(&services.database_url, &name), name, admin_url: services.database_url.clone() }
    }

    pub async fn drop_db(self) {
        let mut admin = PgConnection::connect(&self.admin_url).await.unwrap();
        let sql = format!("drop database if exists {} with (force)", self.name);
        let Err(err) = admin.execute(sql.as_str()).await else { return };
        // `with (force)` refuses when a process of no role of ours is in the database (an
        // autovacuum worker), before it ends any. Then end our own sessions; a plain drop
        // asks autovacuum to stop and waits for it.
        assert!(is_sqlstate(&err, "42501"), "dropping {}: {err}", self.name);
        for _ in 0..10 {
            sqlx::query(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and usename = current_user",
            )
            .bind(&self.name)
            .execute(&mut admin)
            .await
            .unwrap();
            match admin.execute(format!("drop database if exists {}", self.name).as_str()).await {
                Ok(_) => return,
                // Still in use: a session ended a moment late.
                Err(err) if is_sqlstate(&err, "55006") => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await
                }
                Err(err) => panic!("dropping {}: {err}", self.name),
            }
        }
        panic!("{} is still in use", self.name);
    }
}

/// Whether `err` is a database's error of SQLSTATE `code`.
fn is_sqlstate(err: &sqlx::Error, code: &str) -> bool {
    err.as_database_error().and_then(|e| e.code()).is_some_and(|c| c == code)
}

/// A RabbitMQ vhost of this test's own, made through the management API.
pub struct TestVhost {
    pub name: String,
    pub amqp_url: String,
    management_url: String,
    user: String,
    password: String,
    /// Users made for the agents of a test fleet, removed with the vhost.
    agent_users: std::sync::Mutex<Vec<String>>,
}

impl TestVhost {
    /// The broker user the vhost's URL signs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub async fn create(services: &Services) -> TestVhost {
        let (user, password) = credentials(&services.amqp_url);
        let name = format!("test-{}", Uuid::new_v4().simple());
        let management_url = strip_userinfo(&services.amqp_management_url);
        let client = crate::http_client().build().unwrap();
        let put = |path: String, body: serde_json::Value| {
            client.put(format!("{management_url}{path}")).basic_auth(&user, Some(&password)).json(&body).send()
        };
        let created = put(format!("/api/vhosts/{name}"), serde_json::json!({})).await.expect("management API");
        assert!(created.status().is_success(), "creating vhost: {}", created.status());
        let permissions = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
        let granted = put(format!("/api/permissions/{name}/{user}"), permissions).await.unwrap();
        assert!(granted.status().is_success(), "granting vhost: {}", granted.status());
        let (base, _) = services.amqp_url.rsplit_once('/').expect("AMQP URL has a vhost");
        TestVhost {
            amqp_url: format!("{base}/{name}"),
            name,
            management_url,
            user,
            password,
            agent_users: Default::default(),
        }
    }

    /// The type of `queue` of this vhost (`classic`, `quorum`), if it exists.
    pub async fn queue_type(&self, queue: &str) -> Option<String> {
        let url = format!("{}/api/queues/{}/{}", self.management_url, self.name, queue);
        let response = crate::http_client()
            .build()
            .unwrap()
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.error_for_status().ok()?.json().await.ok()?;
        body["type"].as_str().map(String::from)
    }

    /// Messages ready in `queue` of this vhost (0 when the queue does not exist), exactly
    /// as RabbitMQ counts them now; a queue with a live consumer holds few.
    pub async fn messages(&self, queue: &str) -> u32 {
        let connection =
            lapin::Connection::connect(&self.amqp_url, lapin::ConnectionProperties::default()).await.expect("RabbitMQ");
        let channel = connection.create_channel().await.unwrap();
        let count = queue_messages(&channel, queue).await.unwrap_or(0);
        let _ = connection.close(0, "counted".into()).await;
        count
    }

    /// A user of this vhost for agent `host_id`, allowed its own queue and the exchange it
    /// answers through, nothing else: (user, password).
    pub async fn create_agent_user(&self, host_id: &str) -> (String, String) {
        let user = format!("{}-{host_id}", self.name);
        let password = Uuid::new_v4().simple().to_string();
        let client = crate::http_client().build().unwrap();
        let put = |path: String, body: serde_json::Value| {
            client
                .put(format!("{}{path}", self.management_url))
                .basic_auth(&self.user, Some(&self.password))
                .json(&body)
                .send()
        };
        let created = put(format!("/api/users/{user}"), serde_json::json!({ "password": password, "tags": "" }))
            .await
            .expect("management API");
        assert!(created.status().is_success(), "creating user: {}", created.status());
        let own = regex_escape(&demofleet_common::topology::host_queue(host_id));
        let exchange = regex_escape(demofleet_common::topology::EXCHANGE);
        let controller = regex_escape(demofleet_common::topology::CONTROLLER_QUEUE);
        let permissions = serde_json::json!({
            "configure": format!("^({exchange}|{controller}|{own})$"),
            "write": format!("^({exchange}|{controller}|{own})$"),
            "read": format!("^({exchange}|{own})$"),
        });
        let granted = put(format!("/api/permissions/{}/{user}", self.name), permissions).await.unwrap();
        assert!(granted.status().is_success(), "granting user: {}", granted.status());
        self.agent_users.lock().unwrap().push(user.clone());
        (user, password)
    }

    /// The prefix of the broker users of this vhost's hosts (`<vhost>-`): a controller
    /// enrolling hosts names their users so, and they are deleted with the vhost.
    pub fn agent_user_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    /// The broker users whose names start with this vhost's agent prefix.
    pub async fn enrolled_users(&self) -> Vec<String> {
        let url = format!("{}/api/users", self.management_url);
        let client = crate::http_client().build().unwrap();
        let response = client.get(url).basic_auth(&self.user, Some(&self.password)).send().await;
        let Ok(users) = response.and_then(|r| r.error_for_status()) else { return Vec::new() };
        let users: Vec<serde_json::Value> = users.json().await.unwrap_or_default();
        let prefix = self.agent_user_prefix();
        users.iter().filter_map(|u| u["name"].as_str()).filter(|n| n.starts_with(&prefix)).map(String::from).collect()
    }

    pub async fn delete(self) {
        let client = crate::http_client().build().unwrap();
        let mut users = std::mem::take(&mut *self.agent_users.lock().unwrap());
        users.extend(self.enrolled_users().await);
        for user in users {
            let url = format!("{}/api/users/{user}", self.management_url);
            let _ = client.delete(url).basic_auth(&self.user, Some(&self.password)).send().await;
        }
        let url = format!("{}/api/vhosts/{}", self.management_url, self.name);
        let _ =
            crate::http_client().build().unwrap().delete(url).basic_auth(&self.user, Some(&self.password)).send().await;
    }
}

/// The messages ready in `queue`, as RabbitMQ counts them now (an error, which closes
/// `channel`, when there is no such queue).
pub async fn queue_messages(channel: &lapin::Channel, queue: &str) -> lapin::Result<u32> {
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    Ok(channel.queue_declare(queue.into(), passive, Default::default()).await?.message_count())
}

/// User and password from `scheme://user:password@host/...`.
fn credentials(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let userinfo = rest.split_once('@').map_or("guest:guest", |(u, _)| u);
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    (user.to_string(), password.to_string())
}

fn strip_userinfo(url: &str) -> String {
    match (url.split_once("://"), url.split_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        _ => url.to_string(),
    }
    .trim_end_matches('/')
    .to_string()
}

/// A free TCP port on the loopback interface, never one this process was given before:
/// a port is free only until someone binds it, and the kernel may offer a port again that
/// an earlier call gave for a server not started yet (two RabbitMQ nodes of one cluster were
/// given the same distribution port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A NATS subject prefix of this test's own.
pub fn nats_prefix() -> String {
    format!("t{}", Uuid::new_v4().simple())
}

/// TLS on a NATS server: clients must speak it, and show a certificate signed by `ca`.
#[derive(Debug, Clone)]
pub struct NatsTls {
    pub ca: PathBuf,
    pub server: crate::pki::CertFiles,
}

/// A NATS server's configuration file, as an operator (or the ansible broker role) writes
/// one: blocks are added beside `tls` (e.g. `authorization`) as the tests need them.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The address it listens on (`0.0.0.0`: also on the test fleet's links).
    pub listen: String,
    pub port: u16,
    /// The monitoring endpoint's port, on 127.0.0.1 (`/connz` lists the clients).
    pub monitor_port: u16,
    pub tls: Option<NatsTls>,
    /// A file the configuration `include`s (the controller's authorization file), by its
    /// path relative to the configuration file's folder (NATS reads it so, even when absolute).
    pub include: Option<PathBuf>,
    /// Where the server writes its process id (for the controller's SIGHUP).
    pub pid_file: Option<PathBuf>,
}

impl NatsConfig {
    /// The configuration file's text.
    pub fn render(&self) -> String {
        let quoted = |path: &std::path::Path| serde_json::to_string(path.to_str().expect("a UTF-8 path")).unwrap();
        let mut text =
            format!("listen: \"{}:{}\"\nhttp: \"127.0.0.1:{}\"\n", self.listen, self.port, self.monitor_port);
        if let Some(tls) = &self.tls {
            text.push_str(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 5\n}}\n",
                quoted(&tls.server.cert),
                quoted(&tls.server.key),
                quoted(&tls.ca)
            ));
        }
        if let Some(pid_file) = &self.pid_file {
            text.push_str(&format!("pid_file: {}\n", quoted(pid_file)));
        }
        if let Some(include) = &self.include {
            text.push_str(&format!("include {}\n", quoted(include)));
        }
        text
    }
}

/// A NATS server of one test's own, on a free loopback port, that the test may stop and
/// start again.
pub struct PrivateNats {
    pub port: u16,
    /// Its monitoring port, when its configuration has one.
    monitor_port: Option<u16>,
    /// Whether it speaks TLS only.
    tls: bool,
    /// Its configuration file.
    file: PathBuf,
    /// Its log (and the configuration file it was given as a [`NatsConfig`]).
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    pub fn start() -> PrivateNats {
        PrivateNats::start_on("127.0.0.1")
    }

    /// A server listening on `address` (`0.0.0.0`: also on the test fleet's links).
    pub fn start_on(address: &str) -> PrivateNats {
        PrivateNats::start_with(address, None)
    }

    /// A server listening on `address`, speaking TLS only when `tls` is given.
    pub fn start_with(address: &str, tls: Option<NatsTls>) -> PrivateNats {
        PrivateNats::start_config(address, tls, None)
    }

    /// A server on 127.0.0.1 whose users are those of the authorization file `auth` (its
    /// text), at [`PrivateNats::auth_file`], which the controller rewrites
    /// (`DEMOFLEET_NATS_AUTH_FILE`) and has the server read again by SIGHUP to the process
    /// in [`PrivateNats::pid_file`] (`DEMOFLEET_NATS_PID_FILE`).
    pub fn start_with_authorization(auth: &str) -> PrivateNats {
        PrivateNats::start_config("127.0.0.1", None, Some(auth))
    }

    /// [`PrivateNats::start_with_authorization`] listening on `address`, speaking TLS only
    /// when `tls` is given.
    pub fn start_authorized(address: &str, tls: Option<NatsTls>, auth: &str) -> PrivateNats {
        PrivateNats::start_config(address, tls, Some(auth))
    }

    fn start_config(address: &str, tls: Option<NatsTls>, auth: Option<&str>) -> PrivateNats {
        let (port, monitor_port) = (free_port(), free_port());
        let dir = tempfile::Builder::new().prefix("demofleet-nats-").tempdir().unwrap();
        let (include, pid_file) = match auth {
            Some(text) => {
                std::fs::write(dir.path().join("auth.conf"), text).unwrap();
                (Some(PathBuf::from("auth.conf")), Some(dir.path().join("nats.pid")))
            }
            None => (None, None),
        };
        let config = NatsConfig { listen: address.to_string(), port, monitor_port, tls, include, pid_file };
        let file = dir.path().join("nats-server.conf");
        std::fs::write(&file, config.render()).unwrap();
        let tls = config.tls.is_some();
        let mut nats = PrivateNats { port, monitor_port: Some(monitor_port), tls, file, dir, child: None };
        nats.restart();
        nats
    }

    /// The authorization file of a server started with one.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.conf")
    }

    /// The file holding the server's process id, of a server started with authorization.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("nats.pid")
    }

    /// A server run on a configuration file written elsewhere (by the ansible broker role),
    /// which listens on `port` of 127.0.0.1, speaking TLS only when `tls`.
    pub fn start_from_file(file: &std::path::Path, port: u16, tls: bool) -> PrivateNats {
        let dir = tempfile::Builder::new().prefix("demofleet-nats-").tempdir().unwrap();
        let file = file.to_path_buf();
        let mut nats = PrivateNats { port, monitor_port: None, tls, file, dir, child: None };
        nats.restart();
        nats
    }

    /// Its URL on 127.0.0.1: `tls://` when it speaks TLS.
    pub fn url(&self) -> String {
        self.url_at("127.0.0.1")
    }

    /// Its URL at `address` (a test host's gateway).
    pub fn url_at(&self, address: &str) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://{address}:{}", self.port)
    }

    /// Its URL at `address` as `user` with `password`.
    pub fn url_as(&self, address: &str, user: &str, password: &str) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://{user}:{password}@{address}:{}", self.port)
    }

    /// How many times the server has read its configuration again (SIGHUP) so far.
    pub fn reloads(&self) -> usize {
        self.log().matches("Reloaded server configuration").count()
    }

    /// Stop the server (SIGKILL, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start (again) on the same port and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("nats-server.log")).unwrap();
        let child = std::process::Command::new("nats-server")
            .arg("-c")
            .arg(&self.file)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Have the server read its configuration and certificates again (SIGHUP), its
    /// connections kept.
    pub fn reload(&self) {
        let child = self.child.as_ref().expect("the server runs");
        let status = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -HUP nats-server");
    }

    /// GET `path` of the server's monitoring endpoint.
    pub async fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.monitor_port?);
        crate::http_client().build().ok()?.get(url).send().await.ok()?.json().await.ok()
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `text` as a regular expression matching exactly it (RabbitMQ permission patterns).
fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
        out
    })
}
