//! How a repository asks to be run, first match wins: `.demofleet.toml` at its root, else
//! a `Dockerfile` (port from its `EXPOSE`, else 8080), else the legacy executable `./run`
//! (`./run serve --detach --port P`, which starts the container itself with our options
//! from `CANONICAL_WEBTEAM_RUN_SERVE_DOCKER_OPTS`, as the service demofleet replaces did).
//! The file is untrusted input: paths must stay inside the clone, unknown keys are
//! refused, and limits may not exceed the host's policy.
//!
//! ```toml
//! dockerfile = "deploy/Containerfile"   # relative to `context`; default "Dockerfile"
//! context = "."                          # build context inside the clone; default "."
//! port = 9000                            # the port the demo listens on
//! health_path = "/healthz"               # must answer 2xx/3xx; default "/"
//! [build_args]
//! NODE_ENV = "production"
//! [env]
//! GREETING = "hello"
//! [limits]
//! memory_mb = 256
//! cpus = 0.5
//! pids = 128
//! ```

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::compose::{self, ComposePlan};
use crate::config::Config;

pub const FILE: &str = ".demofleet.toml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    pub port: Option<u16>,
    pub health_path: Option<String>,
    #[serde(default)]
    pub build_args: HashMap<String, String>,
    #[serde(default)]
    pub env: HashMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
    /// Compose mode: the compose file, relative to the repository root.
    pub compose: Option<String>,
    /// Compose mode: the service the demo's address routes to.
    pub service: Option<String>,
    /// Compose mode: `"on_push"` starts each generation's volumes empty; `"never"` (default)
    /// keeps them.
    pub reset: Option<String>,
    /// Compose mode: a command run once the data is new.
    pub seed: Option<SeedConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    pub service: String,
    pub command: String,
    /// `"on_create"` (default): when the demo's data is new; `"always"`: at every launch.
    pub when: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memory_mb: Option<u32>,
    pub cpus: Option<f64>,
    pub pids: Option<u32>,
}

/// What the agent will build and run, after checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The legacy `./run` starts the container; nothing is built here.
    pub legacy_run: bool,
    /// Build context, inside the clone.
    pub context: PathBuf,
    /// Dockerfile path relative to the context.
    pub dockerfile: String,
    pub build_args: HashMap<String, String>,
    /// Port from the file; `None`: from the image's `EXPOSE`, else 8080.
    pub port: Option<u16>,
    pub health_path: String,
    pub env: Vec<String>,
    pub memory_mb: u32,
    pub cpus: f64,
    pub pids: u32,
    /// Compose mode: the services to build and run instead of `context`/`dockerfile`.
    pub compose: Option<ComposePlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the repository has no .demofleet.toml, compose file, Dockerfile or ./run; demofleet cannot build it")]
    NothingToBuild,
    #[error(".demofleet.toml: {0}")]
    Invalid(String),
    /// A path of the repository that is not what it must be (a symlink out of the clone, a
    /// Dockerfile naming another demo's image): the message names it.
    #[error("{0}")]
    Refused(String),
    #[error("reading the repository: {0}")]
    Io(#[from] std::io::Error),
}

/// The largest `.demofleet.toml` or Dockerfile read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The plan for the clone in `dir`, under the host's policy in `config`.
pub fn plan(dir: &Path, config: &Config) -> Result<Plan, PlanError> {
    // Every path is resolved, symlinks and all, and must stay inside the clone's real folder.
    let root = dir.canonicalize()?;
    let demo: DemoConfig = if let Some(file) = existing(&root, &root, FILE)?.filter(|f| f.is_file()) {
        toml::from_str(&read_small(&file, FILE)?).map_err(|e| PlanError::Invalid(e.message().to_string()))?
    } else if let Some((name, compose)) = root_compose(&root)? {
        // A root compose file with exactly one published service, and no .demofleet.toml.
        let settings = compose::Settings { keep_data: true, ..Default::default() };
        let plan = compose::plan(&root, &root, &name, compose, settings)?;
        return limited(&root, &DemoConfig::default(), config, Some(plan));
    } else if existing(&root, &root, "Dockerfile")?.is_some_and(|f| f.is_file()) {
        DemoConfig::default()
    } else if is_executable(&dir.join("run")) {
        let mut plan = limited(&root, &DemoConfig::default(), config, None)?;
        plan.legacy_run = true;
        return Ok(plan);
    } else {
        return Err(PlanError::NothingToBuild);
    };
    let invalid = |m: String| PlanError::Invalid(m);
    if let Some(file) = &demo.compose {
        for (key, set) in [
            ("dockerfile", demo.dockerfile.is_some()),
            ("context", demo.context.is_some()),
            ("build_args", !demo.build_args.is_empty()),
        ] {
            if set {
                return Err(invalid(format!("`{key}` has no meaning with `compose`: each service's `build` says it")));
            }
        }
        let compose = compose_plan(&root, &demo, file)?;
        return limited(&root, &demo, config, Some(compose));
    }
    for (key, set) in
        [("service", demo.service.is_some()), ("reset", demo.reset.is_some()), ("seed", demo.seed.is_some())]
    {
        if set {
            return Err(invalid(format!("`{key}` is for compose mode: name the compose file with `compose`")));
        }
    }
    let context_name = demo.context.as_deref().unwrap_or(".");
    if !is_relative_inside(context_name) {
        return Err(invalid(format!("`context` {context_name:?} must be a relative path inside the repository")));
    }
    let context = existing(&root, &root, context_name)?
        .filter(|c| c.is_dir())
        .ok_or_else(|| invalid(format!("`context` {context_name:?} is not a folder of the repository")))?;
    let dockerfile = demo.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into());
    if !is_relative_inside(&dockerfile) {
        return Err(invalid(format!("`dockerfile` {dockerfile:?} must be a relative path inside the build context")));
    }
    let dockerfile_path = existing(&context, &context, &dockerfile)?
        .filter(|p| p.is_file())
        .ok_or_else(|| invalid(format!("`dockerfile` {dockerfile:?} does not exist in the build context")))?;
    crate::dockerfile::check(&read_small(&dockerfile_path, &dockerfile)?)
        .map_err(|e| PlanError::Refused(format!("{dockerfile}: {e}")))?;
    for key in demo.build_args.keys() {
        if !is_variable_name(key) {
            return Err(invalid(format!("{key:?} is not a variable name")));
        }
    }
    let mut plan = limited(&context, &demo, config, None)?;
    plan.dockerfile = dockerfile;
    plan.build_args = demo.build_args;
    Ok(plan)
}

/// The compose file `file` that `.demofleet.toml` names, read under its settings.
fn compose_plan(root: &Path, demo: &DemoConfig, file: &str) -> Result<ComposePlan, PlanError> {
    let invalid = |m: String| PlanError::Invalid(m);
    if !is_relative_inside(file) {
        return Err(invalid(format!("`compose` {file:?} must be a relative path inside the repository")));
    }
    let path = existing(root, root, file)?
        .filter(|p| p.is_file())
        .ok_or_else(|| invalid(format!("`compose` {file:?} is not a file of the repository")))?;
    let parsed = compose::parse(&read_small(&path, file)?).map_err(|e| invalid(format!("{file}: {e}")))?;
    let keep_data = match demo.reset.as_deref() {
        None | Some("never") => true,
        Some("on_push") => false,
        Some(other) => return Err(invalid(format!("`reset` {other:?} must be \"never\" or \"on_push\""))),
    };
    let seed = match &demo.seed {
        None => None,
        Some(seed) => {
            let always = match seed.when.as_deref() {
                None | Some("on_create") => false,
                Some("always") => true,
                Some(other) => {
                    return Err(invalid(format!("`seed.when` {other:?} must be \"on_create\" or \"always\"")))
                }
            };
            if seed.command.trim().is_empty() {
                return Err(invalid("`seed.command` is empty".into()));
            }
            Some(compose::Seed { service: seed.service.clone(), command: seed.command.clone(), always })
        }
    };
    let base = path.parent().unwrap_or(root);
    let settings = compose::Settings { routed: demo.service.as_deref(), seed, keep_data };
    compose::plan(root, base, file, parsed, settings)
}

/// A compose file at the root that Docker Compose would pick, when it parses and exactly
/// one of its services publishes a port.
fn root_compose(root: &Path) -> Result<Option<(String, docker_compose_types::Compose)>, PlanError> {
    for name in compose::ROOT_FILES {
        let Some(path) = existing(root, root, name)?.filter(|p| p.is_file()) else { continue };
        let Ok(parsed) = compose::parse(&read_small(&path, name)?) else { return Ok(None) };
        return Ok((compose::publishing(&parsed).len() == 1).then(|| (name.to_string(), parsed)));
    }
    Ok(None)
}

/// The plan's common part: health path, port, environment and limits from `demo`, checked
/// against the host's policy; build context `context`, Dockerfile `Dockerfile`.
fn limited(
    context: &Path,
    demo: &DemoConfig,
    config: &Config,
    compose: Option<ComposePlan>,
) -> Result<Plan, PlanError> {
    let invalid = |m: String| PlanError::Invalid(m);
    let health_path = demo.health_path.clone().unwrap_or_else(|| "/".into());
    if !health_path.starts_with('/') || health_path.contains(char::is_whitespace) {
        return Err(invalid(format!("`health_path` {health_path:?} must be a path starting with /")));
    }
    if demo.port == Some(0) {
        return Err(invalid("`port` must be 1-65535".into()));
    }
    if let Some(key) = demo.env.keys().find(|k| !is_variable_name(k)) {
        return Err(invalid(format!("{key:?} is not a variable name")));
    }
    let limits = demo.limits;
    let over = |what: &str, asked: String, cap: String| {
        invalid(format!("limits.{what} = {asked} is over this host's limit of {cap}"))
    };
    let memory_mb = limits.memory_mb.unwrap_or(config.demo_memory_mb);
    if memory_mb == 0 || memory_mb > config.demo_memory_mb {
        return Err(over("memory_mb", memory_mb.to_string(), config.demo_memory_mb.to_string()));
    }
    let cpus = limits.cpus.unwrap_or(config.demo_cpus);
    if !(cpus > 0.0 && cpus <= config.demo_cpus) {
        return Err(over("cpus", cpus.to_string(), config.demo_cpus.to_string()));
    }
    let pids = limits.pids.unwrap_or(config.demo_pids);
    if pids == 0 || pids > config.demo_pids {
        return Err(over("pids", pids.to_string(), config.demo_pids.to_string()));
    }
    let mut env: Vec<String> = demo.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    Ok(Plan {
        legacy_run: false,
        context: context.to_path_buf(),
        dockerfile: "Dockerfile".into(),
        build_args: HashMap::new(),
        port: demo.port,
        health_path,
        env,
        memory_mb,
        cpus,
        pids,
        compose,
    })
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_variable_name(key: &str) -> bool {
    !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A path made only of names (no `/` at the start, no `..`).
pub(crate) fn is_relative_inside(relative: &str) -> bool {
    let path = Path::new(relative);
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `base/relative` with every symlink resolved, if anything is there. The deepest part of
/// the path that exists (a link too) must resolve inside `root`, the clone's real folder:
/// a link out of it is refused even where what it points at is missing.
pub(crate) fn existing(root: &Path, base: &Path, relative: &str) -> Result<Option<PathBuf>, PlanError> {
    let path = base.join(relative);
    let found = path.ancestors().find(|p| std::fs::symlink_metadata(p).is_ok()).unwrap_or(base);
    match found.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok((found == path).then_some(real)),
        _ => Err(PlanError::Refused(format!(
            "{relative:?} leads outside the repository, or nowhere (a symlink); demofleet builds only from inside it"
        ))),
    }
}

/// A file of the repository that demofleet reads itself, refused past [`MAX_FILE_BYTES`].
pub(crate) fn read_small(path: &Path, name: &str) -> Result<String, PlanError> {
    if std::fs::metadata(path)?.len() > MAX_FILE_BYTES {
        return Err(PlanError::Refused(format!("{name:?} is over {MAX_FILE_BYTES} bytes")));
    }
    Ok(std::fs::read_to_string(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config() -> Config {
        Config::try_parse_from(["demofleet-agent", "--demo-memory-mb", "512", "--demo-cpus", "1", "--demo-pids", "256"])
            .unwrap()
    }

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    #[test]
    fn an_executable_run_is_the_last_resort() {
        use std::os::unix::fs::PermissionsExt;
        let legacy = repo(&[("run", "#!/bin/sh\n")]);
        let run = legacy.path().join("run");
        assert!(matches!(plan(legacy.path(), &config()), Err(PlanError::NothingToBuild)), "not executable yet");
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(plan(legacy.path(), &config()).unwrap().legacy_run);
        std::fs::write(legacy.path().join("Dockerfile"), "FROM x").unwrap();
        assert!(!plan(legacy.path(), &config()).unwrap().legacy_run, "a Dockerfile comes first");
    }

    #[test]
    fn a_root_compose_file_with_one_published_service_comes_before_the_dockerfile() {
        let one = "services:\n  web:\n    build: .\n    ports: ['80:8080']\n  db:\n    image: x\n";
        let dir = repo(&[("compose.yaml", one), ("Dockerfile", "FROM x")]);
        let compose = plan(dir.path(), &config()).unwrap().compose.expect("compose mode");
        assert_eq!((compose.routed.as_str(), compose.keep_data, compose.services.len()), ("web", true, 2));
        // Two published services, or a file that does not parse: the Dockerfile as before.
        let two = "services:\n  a:\n    image: x\n    ports: ['80']\n  b:\n    image: x\n    ports: ['81']\n";
        for text in [two, "services: [not, a, map]"] {
            let dir = repo(&[("docker-compose.yml", text), ("Dockerfile", "FROM x")]);
            assert!(plan(dir.path(), &config()).unwrap().compose.is_none(), "{text}");
        }
        // A picked-up file is checked as any compose file.
        let hostile = "services:\n  web:\n    image: x\n    ports: ['80']\n    privileged: true\n";
        let err = plan(repo(&[("compose.yml", hostile)]).path(), &config()).unwrap_err().to_string();
        assert!(err.contains("`privileged` is refused"), "{err}");
    }

    #[test]
    fn compose_settings_are_read_and_checked() {
        let compose = "services:\n  web:\n    image: x\n  db:\n    image: y\n";
        let toml = "compose = \"deploy/compose.yaml\"\nservice = \"web\"\nreset = \"on_push\"\n\
                    [seed]\nservice = \"web\"\ncommand = \"./seed\"\nwhen = \"always\"\n";
        let dir = repo(&[(".demofleet.toml", toml), ("deploy/compose.yaml", compose)]);
        let read = plan(dir.path(), &config()).unwrap().compose.unwrap();
        assert_eq!((read.routed.as_str(), read.keep_data), ("web", false));
        assert_eq!(
            read.seed,
            Some(crate::compose::Seed { service: "web".into(), command: "./seed".into(), always: true })
        );
        for (toml, expect) in [
            ("compose = \"c.yaml\"\ndockerfile = \"D\"", "`dockerfile` has no meaning with `compose`"),
            ("compose = \"c.yaml\"\nreset = \"sometimes\"", "`reset` \"sometimes\" must be"),
            ("compose = \"../c.yaml\"", "must be a relative path inside"),
            ("compose = \"c.yaml\"\nservice = \"nope\"", "\"nope\" is not one of its services"),
            ("compose = \"c.yaml\"\n[seed]\nservice = \"web\"\ncommand = \" \"", "`seed.command` is empty"),
            ("service = \"web\"", "`service` is for compose mode"),
        ] {
            let dir = repo(&[(".demofleet.toml", toml), ("c.yaml", compose), ("Dockerfile", "FROM x")]);
            let err = plan(dir.path(), &config()).unwrap_err().to_string();
            assert!(err.contains(expect), "{toml}: {err}");
        }
    }

    #[test]
    fn first_match_wins_and_defaults_fill_in() {
        let plain = repo(&[("Dockerfile", "FROM x")]);
        let p = plan(plain.path(), &config()).unwrap();
        assert_eq!(
            (p.dockerfile.as_str(), p.port, p.health_path.as_str(), p.memory_mb),
            ("Dockerfile", None, "/", 512)
        );
        let toml = "dockerfile = \"deploy/Containerfile\"\nport = 9000\nhealth_path = \"/ok\"\n[env]\nA = \"1\"\n[limits]\nmemory_mb = 64\n";
        let custom = repo(&[(".demofleet.toml", toml), ("deploy/Containerfile", "FROM x"), ("Dockerfile", "FROM y")]);
        let p = plan(custom.path(), &config()).unwrap();
        assert_eq!(
            (p.dockerfile.as_str(), p.port, p.health_path.as_str()),
            ("deploy/Containerfile", Some(9000), "/ok")
        );
        assert_eq!((p.env, p.memory_mb, p.pids), (vec!["A=1".to_string()], 64, 256));
        assert!(matches!(plan(repo(&[("README", "")]).path(), &config()), Err(PlanError::NothingToBuild)));
    }

    #[test]
    fn hostile_files_are_refused_with_a_reason() {
        for (toml, expect) in [
            ("privileged = true", "unknown field `privileged`"),
            ("[limits]\nmemory_mb = 100000", "over this host's limit"),
            ("[limits]\ncpus = 64.0", "over this host's limit"),
            ("dockerfile = \"../../etc/passwd\"", "`dockerfile` \"../../etc/passwd\" must be a relative path inside"),
            ("context = \"/var/run\"", "`context` \"/var/run\" must be a relative path inside the repository"),
            ("[env]\n\"A B\" = \"x\"", "not a variable name"),
            ("volumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]", "unknown field `volumes`"),
        ] {
            let dir = repo(&[(".demofleet.toml", toml), ("Dockerfile", "FROM x")]);
            let err = plan(dir.path(), &config()).unwrap_err().to_string();
            assert!(err.contains(expect), "{toml}: {err}");
        }
    }

    #[test]
    fn symlinks_out_of_the_clone_are_refused_naming_the_path() {
        use std::os::unix::fs::symlink;
        let parent = tempfile::tempdir().unwrap();
        let clone = parent.path().join("clone");
        std::fs::create_dir(&clone).unwrap();
        std::fs::write(parent.path().join("secret"), "x = 1").unwrap();
        type Paths = &'static [(&'static str, &'static str)];
        let cases: [(&str, Paths, Paths); 4] = [
            ("\"ctx\" leads outside", &[(".demofleet.toml", "context = \"ctx\"")], &[("ctx", "..")]),
            ("\".demofleet.toml\" leads outside", &[("Dockerfile", "FROM x")], &[(".demofleet.toml", "../secret")]),
            ("\"Dockerfile\" leads outside", &[], &[("Dockerfile", "/etc/hostname")]),
            (
                "\"deploy/Dockerfile\" leads outside",
                &[(".demofleet.toml", "dockerfile = \"deploy/Dockerfile\"")],
                &[("deploy", "/etc")],
            ),
        ];
        for (expect, files, links) in cases {
            std::fs::remove_dir_all(&clone).unwrap();
            std::fs::create_dir(&clone).unwrap();
            for (path, text) in files {
                std::fs::write(clone.join(path), text).unwrap();
            }
            for (path, target) in links {
                symlink(target, clone.join(path)).unwrap();
            }
            let err = plan(&clone, &config()).unwrap_err();
            assert!(matches!(err, PlanError::Refused(_)) && err.to_string().contains(expect), "{expect}: {err}");
        }
        // A link that stays inside is fine.
        std::fs::remove_dir_all(&clone).unwrap();
        std::fs::create_dir_all(clone.join("deploy")).unwrap();
        std::fs::write(clone.join("deploy/Dockerfile"), "FROM x").unwrap();
        symlink("deploy/Dockerfile", clone.join("Dockerfile")).unwrap();
        assert!(plan(&clone, &config()).is_ok());
    }

    #[test]
    fn a_dockerfile_naming_a_demo_image_is_refused() {
        let dir = repo(&[("Dockerfile", "FROM demofleet/base:busybox\nCOPY --from=demofleet/x-o-pr-1:g1 / /\n")]);
        let err = plan(dir.path(), &config()).unwrap_err().to_string();
        assert!(err.starts_with("Dockerfile: line 2: `COPY --from=demofleet/x-o-pr-1:g1 / /`"), "{err}");
    }
}
