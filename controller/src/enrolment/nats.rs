//! The NATS authorization file: the controller's own user and every enrolled host's, each
//! host allowed to publish only on its own subjects (`<prefix>.host.<id>.>`: heartbeats
//! and its demos' log lines). NATS reads it where its configuration `include`s it, again
//! on SIGHUP.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};

use crate::db::enrolments::HostEnrolment;

/// The file's text: an `authorization` block. The controller's user (from its NATS URL; its
/// name and the bcrypt hash of its password) may publish and subscribe anywhere; a host's
/// user may publish only on its own subjects.
pub fn authorization(
    prefix: &str,
    controller: Option<(String, String)>,
    hosts: &[HostEnrolment],
) -> anyhow::Result<String> {
    let mut out = String::from(
        "# Written by demofleet-controller (DEMOFLEET_NATS_AUTH_FILE) at each enrolment and revocation.\n\
         authorization {\n  users = [\n",
    );
    if let Some((user, hash)) = controller {
        writeln!(out, "    {{user: {}, password: {}}}", quote(&user), quote(&hash))?;
    }
    for host in hosts.iter().filter(|h| h.is_live()) {
        let (Some(user), Some(hash)) = (&host.nats_user, &host.nats_password_hash) else { continue };
        let own = quote(&format!("{prefix}.host.{}.>", host.host_id));
        writeln!(
            out,
            "    {{user: {}, password: {}, permissions: {{publish: {{allow: [{own}]}}, subscribe: {{allow: [\"_INBOX.>\"]}}}}}}",
            quote(user),
            quote(hash)
        )?;
    }
    out.push_str("  ]\n}\n");
    Ok(out)
}

/// bcrypt's cost: NATS checks a password at each connection.
const COST: u32 = 10;

/// A bcrypt hash of `password` in the `$2a$` form NATS reads.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let hashed = bcrypt::hash_with_result(password, COST).context("hashing a NATS password")?;
    Ok(hashed.format_for_version(bcrypt::Version::TwoA))
}

/// The hash of `user`'s password in the authorization file `text`, if the file names that
/// user and `password` is still the one hashed: kept, so that the file's text changes only
/// when its users do.
pub fn kept_hash(text: &str, user: &str, password: &str) -> Option<String> {
    let start = format!("{{user: {}, password: ", quote(user));
    let line = text.lines().map(str::trim).find(|l| l.starts_with(&start))?;
    let quoted = line[start.len()..].split([',', '}']).next()?.trim();
    let hash: String = serde_json::from_str(quoted).ok()?;
    bcrypt::verify(password, &hash).ok()?.then_some(hash)
}

/// Replace the file at `path` with `text` atomically, readable by its owner and group only.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
    std::fs::rename(&tmp, path)
}

/// Send SIGHUP to the process whose pid is in `pid_file`, so NATS reloads its configuration.
pub fn reload(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file).with_context(|| format!("reading {}", pid_file.display()))?;
    let pid: libc::pid_t =
        text.trim().parse().with_context(|| format!("{} holds no process id", pid_file.display()))?;
    // SAFETY: kill has no memory preconditions; a wrong pid is reported as an error.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!("sending SIGHUP to NATS (pid {pid}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_publish_only_on_their_own_subjects() {
        let live = HostEnrolment {
            host_id: "host-a".into(),
            enrolled_at: time::OffsetDateTime::now_utc(),
            enrolled_by: "test".into(),
            amqp_user: Some("agent-host-a".into()),
            nats_user: Some("agent-host-a".into()),
            nats_password_hash: Some("$2a$04$abc".into()),
            revoked_at: None,
            revoked_by: None,
        };
        let revoked = HostEnrolment {
            host_id: "host-b".into(),
            nats_user: Some("agent-host-b".into()),
            revoked_at: Some(time::OffsetDateTime::now_utc()),
            ..live.clone()
        };
        let controller = Some(("ctl".into(), hash("pw").unwrap()));
        let text = authorization("demofleet", controller, &[live, revoked]).unwrap();
        assert!(text.contains(r#"{user: "agent-host-a", password: "$2a$04$abc", permissions: {publish: {allow: ["demofleet.host.host-a.>"]}"#), "{text}");
        assert!(!text.contains("host-b"), "a revoked host is left out: {text}");
        assert!(text.contains(r#"{user: "ctl", password: "$2a$"#), "{text}");
        assert!(!text.contains("pw\""), "no password in clear: {text}");
    }

    #[test]
    fn the_controllers_hash_is_kept_while_its_password_is_the_same() {
        let hashed = hash("pw").unwrap();
        let text = authorization("demofleet", Some(("ctl".into(), hashed.clone())), &[]).unwrap();
        assert_eq!(kept_hash(&text, "ctl", "pw"), Some(hashed));
        assert_eq!(kept_hash(&text, "ctl", "another"), None, "a new password is hashed anew");
        assert_eq!(kept_hash(&text, "someone", "pw"), None);
        assert_eq!(kept_hash("garbage {user: \"ctl\", password: nope}", "ctl", "pw"), None);
    }
}
