//! Repository secrets: environment variables an admin sets for a repository's previews.
//! Values are sealed at rest with the controller's key (`DEMOFLEET_SECRETS_KEY_FILE`), and
//! sealed again for the agents with the key they share (`DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE`)
//! in the launch step's message. A value is in clear only in this module's memory, never
//! in a log, an error or an answer: only names are shown.

use std::path::Path;

use sqlx::PgExecutor;

use demofleet_common::sealed::{self, Key, KeyError};
use demofleet_common::wire::DemoEnv;

use crate::db::demos::Demo;
use crate::db::{secrets, settings};

/// The longest value, in bytes.
pub const MAX_VALUE_BYTES: usize = 32 * 1024;
/// The longest name.
pub const MAX_NAME_LEN: usize = 128;
/// Names the agent sets itself for every demo.
const RESERVED: [&str; 5] = ["PORT", "DEMO_URL", "DEMO_HOSTNAME", "DEMO_PR", "DEMO_SHA"];

/// The controller's keys, and how a repository's clone URL is spelled (to tell forks).
#[derive(Debug, Clone)]
pub struct Vault {
    at_rest: Option<Key>,
    transport: Option<Key>,
    git_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("secrets are off: the controller has no key to store them with (set DEMOFLEET_SECRETS_KEY_FILE to a file of 32 random bytes, e.g. `openssl rand -hex 32`)")]
    NoKey,
    #[error("secrets are off: the controller has no key shared with agents to send them with (set DEMOFLEET_SECRETS_TRANSPORT_KEY_FILE on the controller and the agents)")]
    NoTransportKey,
    #[error("{0}")]
    BadName(String),
    #[error("{0}")]
    BadValue(String),
}

impl Vault {
    /// The keys in the files given (read now), for clone URLs spelled as `git_url`.
    pub fn load(at_rest: Option<&Path>, transport: Option<&Path>, git_url: &str) -> Result<Vault, KeyError> {
        Ok(Vault {
            at_rest: at_rest.map(Key::from_file).transpose()?,
            transport: transport.map(Key::from_file).transpose()?,
            git_url: git_url.to_string(),
        })
    }

    /// No keys: secrets cannot be set, and a repository's stored ones cannot be sent.
    pub fn none(git_url: &str) -> Vault {
        Vault { at_rest: None, transport: None, git_url: git_url.to_string() }
    }

    /// `value` of `owner/repo`'s variable `name`, sealed for storing; refused without the keys
    /// (without the transport key it could be stored but never reach a container).
    pub fn seal(&self, owner: &str, repo: &str, name: &str, value: &str) -> Result<Vec<u8>, VaultError> {
        check_name(name)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(VaultError::BadValue(format!("a value may have at most {MAX_VALUE_BYTES} bytes")));
        }
        if value.contains('\0') {
            return Err(VaultError::BadValue("a value may not contain a NUL character".into()));
        }
        let key = self.at_rest.as_ref().ok_or(VaultError::NoKey)?;
        if self.transport.is_none() {
            return Err(VaultError::NoTransportKey);
        }
        Ok(key.seal(&sealed::at_rest_aad(owner, repo, name), value.as_bytes()))
    }

    /// True when `demo` is built from a repository other than its pull request's base.
    pub fn is_fork(&self, demo: &Demo) -> bool {
        let base = self.git_url.replace("{owner}", &demo.owner).replace("{repo}", &demo.repo);
        !base.eq_ignore_ascii_case(&demo.clone_url)
    }

    /// What `demo`'s launch is told of its repository's variables: none when it has none or is
    /// a fork the repository does not share them with; sealed for the agent; or why they
    /// cannot be sent (naming no value).
    pub async fn env_for(&self, db: &mut sqlx::PgConnection, demo: &Demo) -> sqlx::Result<Option<DemoEnv>> {
        let stored = secrets::sealed(&mut *db, &demo.owner, &demo.repo).await?;
        if stored.is_empty() {
            return Ok(None);
        }
        if self.is_fork(demo) && !shared_with_forks(&mut *db, demo).await? {
            tracing::info!(demo = %demo.name, "a fork's preview: the repository's secrets are not shared with forks");
            return Ok(None);
        }
        let Some(key) = &self.at_rest else {
            return Ok(Some(DemoEnv::Unavailable(VaultError::NoKey.to_string())));
        };
        let Some(transport) = &self.transport else {
            return Ok(Some(DemoEnv::Unavailable(VaultError::NoTransportKey.to_string())));
        };
        let mut vars = Vec::with_capacity(stored.len());
        for secret in stored {
            let aad = sealed::at_rest_aad(&demo.owner, &demo.repo, &secret.name);
            let Some(value) = key.open(&aad, &secret.sealed).ok().and_then(|v| String::from_utf8(v).ok()) else {
                let why = format!(
                    "the repository's secret {} does not open with the controller's DEMOFLEET_SECRETS_KEY_FILE \
                     (stored under another key: set it again)",
                    secret.name
                );
                return Ok(Some(DemoEnv::Unavailable(why)));
            };
            vars.push((secret.name, value));
        }
        let aad = sealed::transport_aad(demo.id, demo.generation);
        Ok(Some(DemoEnv::Sealed(sealed::seal_env(transport, &aad, &vars))))
    }
}

async fn shared_with_forks(db: impl PgExecutor<'_>, demo: &Demo) -> sqlx::Result<bool> {
    Ok(settings::get(db, &demo.owner, &demo.repo).await?.secrets_for_forks)
}

/// A variable's name: letters, digits and `_`, not starting with a digit, not one the agent
/// sets itself.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let well_formed = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !well_formed {
        return Err(VaultError::BadName(format!(
            "a variable's name is 1 to {MAX_NAME_LEN} letters, digits and _, not starting with a digit"
        )));
    }
    if RESERVED.contains(&name) || name.starts_with("DEMOFLEET_") || name.starts_with("DEMO_OPT_") {
        return Err(VaultError::BadName(format!("{name} is set by demofleet itself")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("API_KEY").is_ok() && check_name("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "PORT", "DEMOFLEET_X", "DEMO_OPT_Y", &"A".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refused_without_keys() {
        let vault = Vault::none("file:///repos/{owner}/{repo}.git");
        assert!(matches!(vault.seal("o", "r", "API_KEY", "v"), Err(VaultError::NoKey)));
        let message = VaultError::NoKey.to_string();
        assert!(message.contains("DEMOFLEET_SECRETS_KEY_FILE"), "{message}");
    }
}
