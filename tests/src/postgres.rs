//! A PostgreSQL server of one test's own, for tests that stop, restart or crash it: the
//! machine's server, which every other test (and a `scripts/up` stack) uses, is left alone.
//!
//! `initdb` makes a cluster in a temporary directory, owned by the `postgres` user when the
//! test runs as root (PostgreSQL refuses to run as root); the server listens on a free
//! loopback port and on a socket in that directory, and trusts local connections. It has the
//! role and database `scripts/up` makes on the machine's server, so [`PrivatePostgres::url`]
//! serves where `DEMOFLEET_DATABASE_URL` would.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

use crate::command::{self, Group};
use crate::services::free_port;
use crate::wait;

/// The role and database made in every private server, as `scripts/up` makes them.
const ROLE: &str = "demofleet";

pub struct PrivatePostgres {
    pub port: u16,
    /// The cluster's data, its socket and log; removed when dropped.
    dir: TempDir,
    bin: PathBuf,
    /// The user the server runs as: (uid, gid), `None` to run as this process's.
    user: Option<(u32, u32)>,
    server: Group,
}

impl PrivatePostgres {
    /// Make a cluster, start it and create the role and database; ready for connections.
    pub async fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new().prefix("demofleet-postgres-").tempdir().unwrap();
        let user = server_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut postgres = PrivatePostgres { port: free_port(), dir, bin: postgres_bin(), user, server: Group::none() };
        let data = postgres.data().to_str().unwrap().to_string();
        let mut initdb = Command::new(postgres.bin.join("initdb"));
        initdb.args(["-D", &data, "-U", "postgres", "--auth", "trust", "--encoding", "UTF8", "--no-sync"]);
        command::run("initdb", postgres.as_server_user(&mut initdb), Duration::from_secs(120));
        postgres.restart().await;
        let mut admin = postgres.connect("postgres", "postgres").await;
        admin.execute(format!("create role {ROLE} login createdb password '{ROLE}'").as_str()).await.unwrap();
        admin.execute(format!("create database {ROLE} owner {ROLE}").as_str()).await.unwrap();
        admin.close().await.unwrap();
        postgres
    }

    /// The URL of database `demofleet` as its owner, as `DEMOFLEET_DATABASE_URL` takes it.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}:{ROLE}@127.0.0.1:{}/{ROLE}", self.port)
    }

    /// SIGKILL the server and its backends, as a crash does: its next start recovers from
    /// the write-ahead log.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    /// Start the server (again) and wait until it takes connections.
    pub async fn restart(&mut self) {
        self.kill();
        let data = self.data().to_str().unwrap().to_string();
        let socket_dir = self.dir.path().to_str().unwrap().to_string();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let port = self.port.to_string();
        // fsync off: a test's server survives a killed process, not a lost machine.
        let mut server = Command::new(self.bin.join("postgres"));
        server
            .args(["-D", &data, "-p", &port, "-k", &socket_dir])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        self.server = Group::spawn(self.as_server_user(&mut server));
        let what = format!("the private PostgreSQL on port {} to take connections", self.port);
        wait::until_seen(&what, Duration::from_secs(60), || async {
            if let Some(status) = self.server.exited() {
                panic!("PostgreSQL ended ({status}):\n{}", self.log());
            }
            let url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
            let connection = PgConnection::connect(&url).await.map_err(|e| e.to_string())?;
            let _ = connection.close().await;
            Ok(())
        })
        .await;
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn connect(&self, user: &str, database: &str) -> PgConnection {
        let url = format!("postgres://{user}@127.0.0.1:{}/{database}", self.port);
        PgConnection::connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn as_server_user<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }
}

/// The `postgres` user's (uid, gid) when this process runs as root; `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let entry = passwd.lines().find(|l| l.starts_with("postgres:")).expect("a postgres user (the PostgreSQL package)");
    let fields: Vec<&str> = entry.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

/// The newest installed PostgreSQL's programs.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs PostgreSQL)", root.display()))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("an installed PostgreSQL version");
    root.join(newest.to_string()).join("bin")
}
