//! How a demo's container is confined besides its memory, CPU and process limits: no
//! capabilities, no new privileges, a user other than root, and logs of bounded size.
//!
//! The user: an image's own user is kept when it is not root; an image that names none or
//! root runs as `DEMOFLEET_DEMO_USER` (default `65534:65534`, nobody). A named user is
//! looked up in the image's `/etc/passwd`, which the Dockerfile wrote: a name that is uid 0
//! there is root too. On an engine that remaps user namespaces (`userns-remap`), root in a
//! container is an unprivileged uid on the host, so the image's user is kept as it is, and
//! a root one gets back the three capabilities images that drop to a service user need.

use std::collections::HashMap;
use std::io::Read;

use bollard::models::{HostConfig, HostConfigLogConfig};
use bollard::Docker;
use futures::StreamExt;

use crate::config::Config;

/// Capabilities given back to a container running as root in a remapped user namespace.
const ROOT_IN_USERNS_CAPS: [&str; 3] = ["CHOWN", "SETUID", "SETGID"];

/// The confinement of every demo container, whoever it runs as.
pub fn apply(host: &mut HostConfig, config: &Config, user: &User) {
    host.cap_drop = Some(vec!["ALL".into()]);
    host.cap_add = user.root_in_userns.then(|| ROOT_IN_USERNS_CAPS.map(String::from).to_vec());
    host.security_opt = Some(vec!["no-new-privileges".into()]);
    host.privileged = Some(false);
    host.log_config = Some(HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), config.demo_log_max_size.clone()),
            ("max-file".to_string(), config.demo_log_files.to_string()),
        ])),
    });
}

/// Who a demo container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `uid[:gid]` or `name[:group]`, as Docker's `User` takes it.
    pub spec: String,
    /// A name whose uid only the image's `/etc/passwd` knows: check it once the container exists.
    pub named: bool,
    /// Root, allowed because the engine remaps user namespaces.
    pub root_in_userns: bool,
}

/// The user a container of an image whose `USER` is `image_user` runs as.
pub fn choose(image_user: &str, remapped: bool, config: &Config) -> User {
    let uid = image_user.split(':').next().unwrap_or_default();
    let root = matches!(uid, "" | "0" | "root");
    if root && !remapped {
        return fallback(config);
    }
    let named = !root && !uid.bytes().all(|b| b.is_ascii_digit());
    User { spec: image_user.to_string(), named: named && !remapped, root_in_userns: root && remapped }
}

/// `DEMOFLEET_DEMO_USER`.
pub fn fallback(config: &Config) -> User {
    User { spec: config.demo_user.clone(), named: false, root_in_userns: false }
}

/// True when the engine runs containers in remapped user namespaces.
pub async fn engine_remaps_users(docker: &Docker) -> bool {
    match docker.info().await {
        Ok(info) => info.security_options.unwrap_or_default().iter().any(|o| o.contains("name=userns")),
        Err(err) => {
            tracing::debug!(error = %err, "asking Docker about user namespaces failed; assuming none");
            false
        }
    }
}

/// The uid the created container `container` gives the user named in `user`, from its
/// `/etc/passwd` (`None`: no such user, or no readable file).
pub async fn uid_in_image(docker: &Docker, container: &str, user: &str) -> Option<u32> {
    let name = user.split(':').next()?;
    let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default().path("/etc/passwd").build();
    let mut stream = docker.download_from_container(container, Some(options));
    let mut archive = Vec::new();
    while let Some(chunk) = stream.next().await {
        archive.extend_from_slice(&chunk.ok()?);
        if archive.len() > 4 * 1024 * 1024 {
            return None;
        }
    }
    uid_in_passwd(&passwd_from_tar(&archive)?, name)
}

/// The regular file in a one-file tar (a symlink or anything else: `None`).
fn passwd_from_tar(archive: &[u8]) -> Option<String> {
    let mut tar = tar::Archive::new(archive);
    let mut entry = tar.entries().ok()?.next()?.ok()?;
    if !entry.header().entry_type().is_file() {
        return None;
    }
    let mut text = String::new();
    entry.read_to_string(&mut text).ok()?;
    Some(text)
}

fn uid_in_passwd(passwd: &str, name: &str) -> Option<u32> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config() -> Config {
        Config::try_parse_from(["demofleet-agent", "--demo-user", "65534:65534"]).unwrap()
    }

    #[test]
    fn root_images_run_as_the_host_s_demo_user_unless_users_are_remapped() {
        let c = config();
        for root in ["", "0", "root", "0:0", "root:staff"] {
            assert_eq!(choose(root, false, &c), fallback(&c), "{root:?}");
            let remapped = choose(root, true, &c);
            assert!(remapped.root_in_userns && !remapped.named && remapped.spec == root, "{root:?}");
        }
        assert_eq!(
            choose("1000:1000", false, &c),
            User { spec: "1000:1000".into(), named: false, root_in_userns: false }
        );
        assert_eq!(choose("node", false, &c), User { spec: "node".into(), named: true, root_in_userns: false });
    }

    #[test]
    fn a_named_user_is_what_the_image_s_passwd_says() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:0:0::/app:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n";
        assert_eq!(uid_in_passwd(passwd, "app"), Some(0), "a name may be root in disguise");
        assert_eq!(uid_in_passwd(passwd, "node"), Some(1000));
        assert_eq!(uid_in_passwd(passwd, "nobody"), None);
    }

    #[test]
    fn confinement_drops_everything_and_bounds_logs() {
        let c = config();
        let mut host = HostConfig::default();
        apply(&mut host, &c, &fallback(&c));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_string()]));
        let logs = host.log_config.unwrap().config.unwrap();
        assert_eq!((logs["max-size"].as_str(), logs["max-file"].as_str()), ("10m", "3"));
    }
}
