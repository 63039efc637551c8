//! A machine of the test fleet, made on this one: a network namespace with an address of its
//! own, linked to the root namespace by a veth pair, running a Docker Engine of its own.
//!
//! The engine is a real `dockerd` with its own data and exec roots, pidfile, socket, bridge
//! and address pools, started inside the host's network namespace (`nsenter --net`) and in
//! a PID and mount namespace of its own (`unshare --pid --fork --kill-child --mount-proc`):
//! so its containers live in that network, its mounts are private to it, and killing the
//! `unshare` process kills the engine, its containerd, shims and every container with it, as
//! a machine that loses power. Images reach it as they would a machine without a registry:
//! `docker save` of the machine's base image, `docker load` into this engine.
//!
//! Demo ports are published on the host's address inside its namespace; the root namespace
//! (the controller, the edge, the tests) reaches them through the link. Taking the link down
//! cuts the host off: its demos keep running, unreachable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Where hosts keep their engines' state: short paths, as containerd's socket path must fit
/// in a Unix socket address.
const HOSTS_DIR: &str = "/var/tmp/demofleet-hosts";

/// A Docker Engine a test looks at: the machine's own, or a test host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    /// `unix://…` of a test host's engine; `None`: the machine's.
    host: Option<String>,
}

/// A demo container as `docker ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoContainer {
    pub demo_id: String,
    pub host_id: String,
    pub generation: String,
    pub running: bool,
}

impl Engine {
    /// The machine's engine (Docker's defaults).
    pub fn machine() -> Engine {
        Engine { host: None }
    }

    /// `docker` against this engine.
    pub fn command(&self) -> Command {
        let mut command = Command::new("docker");
        if let Some(host) = &self.host {
            command.args(["-H", host]);
        }
        command
    }

    /// `docker ARGS` against this engine: its output, or what went wrong.
    pub fn docker(&self, args: &[&str]) -> Result<String, String> {
        let out = crate::command::output(self.command().args(args), crate::command::DOCKER)
            .map_err(|e| format!("docker {args:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A Docker API client of this engine.
    pub fn client(&self) -> bollard::Docker {
        match &self.host {
            None => bollard::Docker::connect_with_local_defaults(),
            Some(host) => bollard::Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION),
        }
        .expect("a Docker client")
    }

    /// The `--docker-host` an agent of this engine gets, if not the machine's.
    pub fn agent_flag(&self) -> Option<String> {
        self.host.clone()
    }

    /// The demo containers on this engine, running or not, with `filter`s
    /// (`label=run.demo.id=…`) on top of `label=run.demo`. An engine that does not answer
    /// (a host that is down) lists none.
    pub fn demo_containers(&self, filters: &[String]) -> Vec<DemoContainer> {
        let mut args = vec!["ps", "-a", "--filter", "label=run.demo"];
        for filter in filters {
            args.extend(["--filter", filter]);
        }
        let format =
            "{{.Label \"run.demo.id\"}} {{.Label \"run.demo.host\"}} {{.Label \"run.demo.generation\"}} {{.State}}";
        args.extend(["--format", format]);
        let listed = self.docker(&args).unwrap_or_default();
        listed
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let (demo_id, host_id, generation, state) =
                    (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
                Some(DemoContainer {
                    demo_id: demo_id.into(),
                    host_id: host_id.into(),
                    generation: generation.into(),
                    running: state == "running",
                })
            })
            .collect()
    }
}

/// The demo containers of `demo_id` on any of `engines`.
pub fn containers_of_demo(engines: &[Engine], demo_id: &str) -> Vec<DemoContainer> {
    let filter = [format!("label=run.demo.id={demo_id}")];
    engines.iter().flat_map(|engine| engine.demo_containers(&filter)).collect()
}

/// One machine of the test fleet: its namespace, link, addresses and engine.
pub struct TestHost {
    /// The host's own address, where its demos answer.
    pub address: String,
    /// The root namespace's end of the link: where the host reaches the control plane.
    pub gateway: String,
    /// The network namespace (`dfh<hex>`).
    pub netns: String,
    /// The root end of the veth pair (`dfr<hex>`).
    link: String,
    /// The engine's state: data and exec roots, socket, pidfile, log.
    dir: PathBuf,
    /// `unshare`, the parent of the engine's PID namespace.
    engine: Option<Child>,
    /// That PID namespace (`/proc/<pid>/ns/pid` of its processes).
    pid_namespace: Option<String>,
}

impl TestHost {
    /// Make a host: namespace, link (a free /30 of 10.231.0.0/16), and a running engine
    /// holding the machine's image `base_image`.
    pub fn create(base_image: &str) -> TestHost {
        let tag = &Uuid::new_v4().simple().to_string()[..8];
        let netns = format!("dfh{tag}");
        let link = format!("dfr{tag}");
        let inner = format!("dfn{tag}");
        let (gateway, address) = free_link_addresses();
        run("ip", &["netns", "add", &netns]);
        run("ip", &["link", "add", &link, "type", "veth", "peer", "name", &inner]);
        run("ip", &["link", "set", &inner, "netns", &netns]);
        run("ip", &["addr", "add", &format!("{gateway}/30"), "dev", &link]);
        run("ip", &["link", "set", &link, "up"]);
        route_between_hosts();
        let dir = PathBuf::from(HOSTS_DIR).join(&netns);
        let mut host = TestHost { address, gateway, netns, link, dir, engine: None, pid_namespace: None };
        host.inside(&["ip", "addr", "add", &format!("{}/30", host.address), "dev", &inner]);
        host.inside(&["ip", "link", "set", &inner, "up"]);
        host.inside(&["ip", "link", "set", "lo", "up"]);
        host.inside(&["ip", "route", "add", "default", "via", &host.gateway]);
        std::fs::create_dir_all(&host.dir).unwrap();
        // An empty configuration of its own: the machine's daemon.json names the machine's roots.
        std::fs::write(host.dir.join("daemon.json"), "{}").unwrap();
        host.start_engine();
        load_image(&host.engine(), base_image);
        host
    }

    /// [`TestHost::create`] off the async runtime's threads.
    pub async fn spawn(base_image: &str) -> TestHost {
        let base_image = base_image.to_string();
        tokio::task::spawn_blocking(move || TestHost::create(&base_image)).await.expect("a test host")
    }

    /// This host's engine.
    pub fn engine(&self) -> Engine {
        Engine { host: Some(format!("unix://{}", self.dir.join("docker.sock").display())) }
    }

    /// `command` run inside the host's network namespace.
    pub fn command_inside(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command.arg(format!("--net=/run/netns/{}", self.netns)).arg(program);
        command
    }

    fn inside(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.netns];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Start the engine (again, after [`TestHost::kill_engine`]) and wait until it answers.
    pub fn start_engine(&mut self) {
        assert!(self.engine.is_none(), "the engine of {} runs", self.netns);
        let dir = &self.dir;
        // A stale pidfile or socket from a killed engine would stop the new one. The exec root
        // is runtime state (a machine keeps it on a tmpfs, `/run`), which a power loss wipes:
        // left in place, the new containerd would first clean up after every dead shim, which
        // on a loaded machine outlasts dockerd's wait for containerd.
        for stale in ["docker.pid", "docker.sock"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let _ = std::fs::remove_dir_all(dir.join("exec"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dockerd.log")).unwrap();
        let path = |name: &str| dir.join(name).display().to_string();
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--mount-proc", "nsenter"])
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["dockerd", "--config-file", &path("daemon.json"), "--data-root", &path("data")])
            .args(["--exec-root", &path("exec"), "--pidfile", &path("docker.pid")])
            .args(["--host", &format!("unix://{}", path("docker.sock"))])
            .args(["--storage-driver", machine_storage_driver()])
            // Every engine is alone in its namespace; these only keep clear of the link.
            .args(["--bip", "172.30.0.1/16", "--default-address-pool", "base=172.31.0.0/16,size=24"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("unshare … dockerd");
        let unshare = child.id();
        self.engine = Some(child);
        let engine = self.engine();
        let deadline = Instant::now() + Duration::from_secs(60);
        while engine.docker(&["version", "--format", "{{.Server.Version}}"]).is_err() {
            if Instant::now() > deadline {
                panic!("the engine of {} did not answer in 60 s:\n{}", self.netns, self.engine_log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let init = processes().into_iter().find(|(_, parent)| *parent == unshare).map(|(pid, _)| pid);
        self.pid_namespace = init
            .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok())
            .map(|ns| ns.display().to_string());
    }

    /// Kill the engine with SIGKILL: its containers die with it, as on a machine that lost
    /// power. Its state on disk stays for [`TestHost::start_engine`].
    pub fn kill_engine(&mut self) {
        if let Some(mut child) = self.engine.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The PID namespace's processes go with its first one; wait until they are gone, so
        // a restart does not find the old engine's socket or locks.
        let Some(namespace) = self.pid_namespace.take() else { return };
        let deadline = Instant::now() + Duration::from_secs(30);
        let in_namespace = |pid: &u32| {
            std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns.display().to_string() == namespace)
        };
        while processes().iter().any(|(pid, _)| in_namespace(pid)) {
            assert!(Instant::now() < deadline, "the engine of {} still running 30 s after the kill", self.netns);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Take the host's link down (`false`) or up again.
    pub fn set_link(&self, up: bool) {
        run("ip", &["link", "set", &self.link, if up { "up" } else { "down" }]);
    }

    /// The engine's log so far, for failure messages.
    pub fn engine_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.kill_engine();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.link]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Let the root namespace route between test hosts, as a network between machines does: the
/// machine's Docker Engine sets the forward policy to drop, so its `DOCKER-USER` chain gets
/// one rule accepting traffic from one host's link to another's (`dfr*`), made once.
fn route_between_hosts() {
    let rule = ["DOCKER-USER", "-i", "dfr+", "-o", "dfr+", "-j", "ACCEPT"];
    let present =
        crate::command::output(Command::new("iptables").args(["-w", "10", "-C"]).args(rule), crate::command::QUICK);
    if !present.is_ok_and(|o| o.status.success()) {
        run("iptables", &[&["-w", "10", "-I"][..], &rule[..]].concat());
    }
}

/// Every process of the machine: (pid, parent pid).
fn processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
            let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect()
}

/// The storage driver of the machine's engine, which every test engine uses too (the
/// kernel and file systems are the same).
fn machine_storage_driver() -> &'static str {
    static DRIVER: OnceLock<String> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let driver = Engine::machine().docker(&["info", "--format", "{{.Driver}}"]).expect("the machine's engine");
        driver.trim().to_string()
    })
}

/// Put the machine's image `image` into `engine`, as onto a machine without a registry:
/// `docker save` once per test process, `docker load` per engine.
fn load_image(engine: &Engine, image: &str) {
    static SAVED: OnceLock<PathBuf> = OnceLock::new();
    let archive = SAVED.get_or_init(|| {
        let id = Engine::machine().docker(&["image", "inspect", "--format", "{{.Id}}", image]).expect("the base image");
        let file = Path::new(HOSTS_DIR).join(format!("{}.tar", id.trim().trim_start_matches("sha256:")));
        if !file.exists() {
            std::fs::create_dir_all(HOSTS_DIR).unwrap();
            let partial = file.with_extension(format!("{}.part", std::process::id()));
            Engine::machine().docker(&["save", "--output", partial.to_str().unwrap(), image]).expect("docker save");
            std::fs::rename(&partial, &file).unwrap();
        }
        file
    });
    engine.docker(&["load", "--quiet", "--input", archive.to_str().unwrap()]).expect("docker load");
}

/// A /30 of 10.231.0.0/16 that no interface here uses: (root end, host end).
fn free_link_addresses() -> (String, String) {
    let listed = crate::command::output(Command::new("ip").args(["-o", "-4", "addr", "show"]), crate::command::QUICK);
    let used = String::from_utf8(listed.unwrap().stdout).unwrap_or_default();
    loop {
        let n = Uuid::new_v4().as_u128();
        let (third, fourth) = ((n % 256) as u8, ((n >> 8) % 64) as u8 * 4);
        let gateway = format!("10.231.{third}.{}", fourth + 1);
        if !used.contains(&format!("inet {gateway}/")) {
            return (gateway, format!("10.231.{third}.{}", fourth + 2));
        }
    }
}

pub(crate) fn run(program: &str, args: &[&str]) {
    let out = crate::command::output(Command::new(program).args(args), crate::command::QUICK)
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
