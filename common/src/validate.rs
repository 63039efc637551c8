//! Every field of a step message checked before the agent acts on it. The broker is a
//! trust boundary: a message may come from anyone who can publish to this host's queue,
//! and its fields end up on git's command line, in Docker's labels and names, in a demo's
//! environment and in paths. A field that is not what the controller would send refuses
//! the step, naming the field.

use std::path::{Component, Path};

use crate::names;
use crate::webhook::event::is_commit_sha;
use crate::wire::DemoSpec;

/// A field of a step message that the agent will not act on.
#[derive(Debug, thiserror::Error)]
#[error("refusing the step: {field} {reason}")]
pub struct Refused {
    pub field: &'static str,
    pub reason: String,
}

fn refuse(field: &'static str, reason: impl Into<String>) -> Refused {
    Refused { field, reason: reason.into() }
}

/// Check every field of `spec`; `local_root` is where `file://` clone URLs may point.
pub fn spec(spec: &DemoSpec, local_root: Option<&Path>) -> Result<(), Refused> {
    if !names::is_valid_name(&spec.name) {
        return Err(refuse("name", format!("{:?} is not a DNS label (a-z, 0-9, inner '-', at most 63)", spec.name)));
    }
    names::validate_owner(&spec.owner).map_err(|e| refuse("owner", e))?;
    names::validate_repo(&spec.repo).map_err(|e| refuse("repo", e))?;
    if spec.pr == 0 || spec.pr > i64::MAX as u64 {
        return Err(refuse("pr", format!("{} is not a pull request number", spec.pr)));
    }
    if !is_commit_sha(&spec.sha) {
        return Err(refuse("sha", format!("{:?} is not a commit id (40 or 64 hex digits)", spec.sha)));
    }
    if spec.generation < 1 {
        return Err(refuse("generation", format!("{} is not a generation (1 or more)", spec.generation)));
    }
    names::validate_login(&spec.github_user).map_err(|e| refuse("github_user", e))?;
    hostname(&spec.name, &spec.hostname)?;
    demo_url(&spec.hostname, &spec.url)?;
    clone_url(&spec.clone_url, local_root)?;
    Ok(())
}

/// `<name>.<domain>`: DNS labels of letters, digits and inner hyphens, 253 characters at most.
fn hostname(name: &str, hostname: &str) -> Result<(), Refused> {
    let label = |l: &str| {
        (1..=names::MAX_LABEL).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = hostname.len() <= 253
        && hostname.strip_prefix(name).is_some_and(|rest| rest.starts_with('.'))
        && hostname.split('.').all(label);
    if ok {
        Ok(())
    } else {
        Err(refuse("hostname", format!("{hostname:?} is not the demo's DNS name ({name}.<domain>)")))
    }
}

/// `http(s)://<hostname>[:port]`, nothing else: it goes into the demo's environment and labels.
fn demo_url(hostname: &str, url: &str) -> Result<(), Refused> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let port_ok = |p: &str| p.is_empty() || p.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    match rest.and_then(|r| r.strip_prefix(hostname)) {
        Some(port) if port_ok(port) => Ok(()),
        _ => Err(refuse("url", format!("{url:?} is not http(s)://{hostname}[:port]"))),
    }
}

/// `https://` and `http://` URLs without credentials, and `file://` URLs of repositories
/// under `local_root` when it is set. Everything else git would take (`ext::`, `fd::`,
/// `ssh://`, `host:path`, options such as `--upload-pack=…`) is refused.
pub fn clone_url(raw: &str, local_root: Option<&Path>) -> Result<(), Refused> {
    let bad = |reason: String| Err(refuse("clone_url", reason));
    if raw.is_empty() || raw.len() > 2048 || raw.starts_with('-') || raw.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return bad(format!("{raw:?} is not a URL git may fetch from"));
    }
    let url = match url::Url::parse(raw) {
        Ok(url) => url,
        Err(err) => return bad(format!("{raw:?} is not a URL ({err})")),
    };
    match url.scheme() {
        "https" | "http" => {
            // Written out as `scheme://host…`: the URL parser also reads `https:host/…`,
            // which git would not take the same way.
            if !raw.starts_with(&format!("{}://", url.scheme())) {
                return bad(format!("{raw:?} must start with {}://", url.scheme()));
            }
            if url.host_str().is_none_or(|h| h.is_empty() || h.starts_with('-')) {
                return bad(format!("{raw:?} names no host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return bad("carries credentials; the agent sends its own token (DEMOFLEET_GIT_TOKEN_FILE)".into());
            }
            Ok(())
        }
        "file" => {
            let Some(root) = local_root else {
                return bad(format!(
                    "{raw:?}: file:// URLs are allowed only under DEMOFLEET_GIT_LOCAL_ROOT, which is unset"
                ));
            };
            local_repository(raw, root)
        }
        other => {
            bad(format!("{raw:?}: scheme {other:?} is not allowed (https, http, file under DEMOFLEET_GIT_LOCAL_ROOT)"))
        }
    }
}

/// A `file://` URL of a folder under `root`. git reads the path as written (no host, no
/// %-decoding), so it is checked as written: no `..`, and the deepest part of it that
/// exists must resolve, symlinks and all, inside the root. A repository missing for now
/// (a mirror not synced yet) is git's to report, and the step is tried again.
fn local_repository(raw: &str, root: &Path) -> Result<(), Refused> {
    let outside = || refuse("clone_url", format!("{raw:?} is not a repository under DEMOFLEET_GIT_LOCAL_ROOT"));
    let Some(path) = raw.strip_prefix("file://").map(Path::new).filter(|p| p.is_absolute()) else {
        return Err(outside());
    };
    let plain = path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || raw.contains(['%', '?', '#']) {
        return Err(outside());
    }
    let found = path.ancestors().find(|p| std::fs::symlink_metadata(p).is_ok()).unwrap_or(Path::new("/"));
    let (Ok(found), Ok(root)) = (found.canonicalize(), root.canonicalize()) else { return Err(outside()) };
    if found.starts_with(&root) && path.canonicalize().map_or(true, |p| p != root) {
        Ok(())
    } else {
        Err(outside())
    }
}

/// Docker's container ids: 64 hex digits (a cleanup message names them).
pub fn container_id(id: &str) -> Result<(), Refused> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(refuse("containers", format!("{id:?} is not a container id")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DemoSpec {
        DemoSpec {
            id: uuid::Uuid::nil(),
            name: "site-owner-pr-1".into(),
            owner: "owner".into(),
            repo: "site.com".into(),
            pr: 1,
            sha: "a".repeat(40),
            clone_url: "https://github.com/owner/site.git".into(),
            url: "http://site-owner-pr-1.demos.example".into(),
            hostname: "site-owner-pr-1.demos.example".into(),
            github_user: "dependabot[bot]".into(),
            generation: 3,
            legacy_run: false,
            closed_outbound: false,
            env: None,
        }
    }

    #[test]
    fn what_the_controller_sends_passes() {
        assert!(spec(&good(), None).is_ok());
        let mut local = good();
        local.hostname = "site-owner-pr-1.localhost".into();
        local.url = "http://site-owner-pr-1.localhost:8080".into();
        assert!(spec(&local, None).is_ok());
    }

    #[test]
    fn every_hostile_field_is_refused_by_name() {
        type Edit = Box<dyn Fn(&mut DemoSpec)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("name", Box::new(|s| s.name = "../../etc".into())),
            ("owner", Box::new(|s| s.owner = "a b".into())),
            ("repo", Box::new(|s| s.repo = "..".into())),
            ("pr", Box::new(|s| s.pr = 0)),
            ("sha", Box::new(|s| s.sha = "--output=/tmp/x".into())),
            ("sha", Box::new(|s| s.sha = "HEAD".into())),
            ("generation", Box::new(|s| s.generation = 0)),
            ("github_user", Box::new(|s| s.github_user = "x\ny".into())),
            ("hostname", Box::new(|s| s.hostname = "site-owner-pr-1.x`) || Host(`evil".into())),
            ("hostname", Box::new(|s| s.hostname = "other-pr-1.demos.example".into())),
            ("url", Box::new(|s| s.url = "javascript:alert(1)".into())),
            ("url", Box::new(|s| s.url = "https://site-owner-pr-1.demos.example@evil.example".into())),
            ("clone_url", Box::new(|s| s.clone_url = "--upload-pack=touch /tmp/x".into())),
            ("clone_url", Box::new(|s| s.clone_url = "ext::sh -c touch% /tmp/x".into())),
            ("clone_url", Box::new(|s| s.clone_url = "https:5/gith5b.com/owner/site.git".into())),
            ("clone_url", Box::new(|s| s.clone_url = "ext::sh".into())),
            ("clone_url", Box::new(|s| s.clone_url = "fd::3".into())),
            ("clone_url", Box::new(|s| s.clone_url = "ssh://-oProxyCommand=x/r".into())),
            ("clone_url", Box::new(|s| s.clone_url = "git@github.com:o/r.git".into())),
            ("clone_url", Box::new(|s| s.clone_url = "https://user:pw@github.com/o/r.git".into())),
            ("clone_url", Box::new(|s| s.clone_url = "file:///etc".into())),
            ("clone_url", Box::new(|s| s.clone_url = "/srv/repo.git".into())),
        ];
        for (field, edit) in cases {
            let mut s = good();
            edit(&mut s);
            let err = spec(&s, None).unwrap_err();
            assert_eq!(err.field, field, "{s:?}: {err}");
        }
    }

    #[test]
    fn file_urls_only_under_the_local_root() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("o/r.git");
        std::fs::create_dir_all(&repo).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("o/escape")).unwrap();
        let url = |p: &Path| format!("file://{}", p.display());
        assert!(clone_url(&url(&repo), Some(root.path())).is_ok());
        assert!(clone_url(&url(&repo), None).is_err(), "no root, no file URLs");
        assert!(clone_url(&url(&root.path().join("o/missing.git")), Some(root.path())).is_ok(), "git reports it");
        assert!(clone_url(&url(&root.path().join("o/escape/missing")), Some(root.path())).is_err());
        for bad in [
            url(&root.path().join("o/escape")),
            url(&root.path().join("o/../../")),
            url(root.path()),
            format!("file://localhost{}", repo.display()),
            format!("file://{}%2e%2e", root.path().display()),
        ] {
            assert!(clone_url(&bad, Some(root.path())).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_ids_are_64_hex_digits() {
        assert!(container_id(&"ab".repeat(32)).is_ok());
        assert!(container_id("--all").is_err());
    }
}
