//! Enrolment: a host is trusted only once enrolled. Enrolling a host makes its broker user
//! (RabbitMQ, through the management API) and its NATS user (in the NATS authorization file
//! the controller keeps), records both, and answers the agent's settings; revoking deletes
//! the broker user, drops the NATS user, and takes the host out of the fleet (its demos are
//! placed elsewhere by the tick).
//!
//! # Layout
//! - Here: [`Enrolment`] (enrol, revoke); its settings are [`EnrolmentSettings`].
//! - [`rabbitmq`]: broker users through RabbitMQ's management API.
//! - [`nats`]: the NATS authorization file, and reloading NATS.

pub mod nats;
pub mod rabbitmq;

use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};
use sqlx::PgPool;

use demofleet_common::messaging::Messaging;
use demofleet_common::names;

use crate::config::EnrolmentSettings;
use crate::db::{audit, enrolments};

/// Enrols and revokes hosts.
#[derive(Clone)]
pub struct Enrolment {
    pub db: PgPool,
    pub settings: EnrolmentSettings,
    pub messaging: Messaging,
}

/// What an enrolled host's agent needs: its settings, with its credentials.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentSettings {
    pub host_id: String,
    pub amqp_url: String,
    pub nats_url: String,
    pub nats_prefix: String,
    /// The broker user whose messages the agent takes as the controller's.
    pub controller_amqp_user: String,
}

impl AgentSettings {
    /// As an environment file (`KEY=value` lines) the agent's unit can read.
    pub fn env_file(&self) -> String {
        format!(
            "DEMOFLEET_HOST_ID={}\nDEMOFLEET_AMQP_URL={}\nDEMOFLEET_NATS_URL={}\nDEMOFLEET_NATS_PREFIX={}\n\
             DEMOFLEET_CONTROLLER_AMQP_USER={}\n",
            self.host_id, self.amqp_url, self.nats_url, self.nats_prefix, self.controller_amqp_user
        )
    }
}

/// Why enrolment refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("{0}")]
    BadHost(String),
    #[error("host {0} is not enrolled (or already revoked)")]
    NotEnrolled(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{0:#}")]
    Broker(anyhow::Error),
}

impl Enrolment {
    pub fn user_of(&self, host_id: &str) -> String {
        format!("{}{host_id}", self.settings.agent_user_prefix)
    }

    /// Enrol `host_id` (again, with new credentials, if it was): make its broker and NATS
    /// users, record them, audit, and answer the agent's settings.
    pub async fn enrol(&self, host_id: &str, actor: &str) -> Result<AgentSettings, EnrolError> {
        if !names::is_valid_name(host_id) {
            return Err(EnrolError::BadHost(format!(
                "{host_id:?} is not a host id: lowercase letters, digits and '-', at most 63"
            )));
        }
        let user = self.user_of(host_id);
        let amqp_password = password();
        let nats_password = password();
        let amqp_base = self.agents_amqp_url();
        if let Some(management) = &self.settings.amqp_management_url {
            let vhost = rabbitmq::vhost_of(first(&amqp_base)).map_err(EnrolError::Broker)?;
            rabbitmq::Management::new(management.expose())
                .map_err(EnrolError::Broker)?
                .put_agent_user(&vhost, &user, &amqp_password, host_id)
                .await
                .map_err(EnrolError::Broker)?;
        }
        let hash = nats::hash(&nats_password).map_err(EnrolError::Broker)?;
        let mut tx = self.db.begin().await?;
        enrolments::enrol(&mut *tx, host_id, actor, Some(&user), &user, &hash).await?;
        audit::record(&mut *tx, actor, "enrol_host", None, serde_json::json!({ "host": host_id, "user": user }))
            .await?;
        tx.commit().await?;
        self.write_nats_file().await.map_err(EnrolError::Broker)?;
        let with_amqp = self.settings.amqp_management_url.is_some();
        let with_nats = self.settings.nats_auth_file.is_some();
        Ok(AgentSettings {
            host_id: host_id.to_string(),
            amqp_url: if with_amqp { with_credentials(&amqp_base, &user, &amqp_password) } else { amqp_base },
            nats_url: if with_nats {
                with_credentials(&self.agents_nats_url(), &user, &nats_password)
            } else {
                self.agents_nats_url()
            },
            nats_prefix: self.messaging.nats_prefix.clone(),
            controller_amqp_user: self.messaging.amqp_user(),
        })
    }

    /// Revoke `host_id`: its broker user deleted (its connections closed with it), its NATS
    /// user dropped, and the host taken out of placement so its demos move elsewhere.
    pub async fn revoke(&self, host_id: &str, actor: &str) -> Result<(), EnrolError> {
        let mut tx = self.db.begin().await?;
        let Some(revoked) = enrolments::revoke(&mut *tx, host_id, actor).await? else {
            return Err(EnrolError::NotEnrolled(host_id.to_string()));
        };
        enrolments::retire_host(&mut *tx, host_id).await?;
        audit::record(&mut *tx, actor, "revoke_host", None, serde_json::json!({ "host": host_id })).await?;
        tx.commit().await?;
        if let (Some(management), Some(user)) = (&self.settings.amqp_management_url, &revoked.amqp_user) {
            rabbitmq::Management::new(management.expose())
                .map_err(EnrolError::Broker)?
                .delete_user(user)
                .await
                .map_err(EnrolError::Broker)?;
        }
        self.write_nats_file().await.map_err(EnrolError::Broker)?;
        Ok(())
    }

    /// Write the NATS authorization file from the live enrolments and have NATS reload it,
    /// when the settings ask for one: at each enrolment and revocation, and as the
    /// controller starts (before it connects to NATS, so a first start writes the user it
    /// connects as).
    pub async fn write_nats_file(&self) -> anyhow::Result<()> {
        let Some(path) = &self.settings.nats_auth_file else { return Ok(()) };
        let hosts = enrolments::list(&self.db).await?;
        let previous = std::fs::read_to_string(path).ok();
        let controller = match demofleet_common::messaging::nats_user(&self.messaging.nats_urls())? {
            Some((user, password)) => {
                let kept = previous.as_deref().and_then(|text| nats::kept_hash(text, &user, &password));
                let hash = match kept {
                    Some(hash) => hash,
                    None => nats::hash(&password)?,
                };
                Some((user, hash))
            }
            None => None,
        };
        let text = nats::authorization(&self.messaging.nats_prefix, controller, &hosts)?;
        // Unchanged (a controller starting again, another replica): NATS is left alone.
        if previous.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        nats::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        // No pid file: NATS is not running, and reads the file when it starts.
        if let Some(pid_file) = self.settings.nats_pid_file.as_ref().filter(|p| p.exists()) {
            nats::reload(pid_file)?;
        }
        Ok(())
    }

    fn agents_amqp_url(&self) -> String {
        self.settings.agents_amqp_url.clone().unwrap_or_else(|| without_credentials(&self.messaging.amqp_url))
    }

    fn agents_nats_url(&self) -> String {
        self.settings.agents_nats_url.clone().unwrap_or_else(|| without_credentials(&self.messaging.nats_url))
    }
}

/// A new random password (alphanumeric, so it needs no escaping in a URL).
fn password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

fn first(urls: &str) -> &str {
    urls.split(',').map(str::trim).find(|u| !u.is_empty()).unwrap_or("")
}

/// Every URL of the comma-separated list `urls` with `user`/`password` as its credentials.
pub fn with_credentials(urls: &str, user: &str, password: &str) -> String {
    map_urls(urls, |url| {
        let _ = url.set_username(user);
        let _ = url.set_password(Some(password));
    })
}

/// Every URL of the comma-separated list `urls` without credentials.
pub fn without_credentials(urls: &str) -> String {
    map_urls(urls, |url| {
        let _ = url.set_username("");
        let _ = url.set_password(None);
    })
}

fn map_urls(urls: &str, change: impl Fn(&mut url::Url)) -> String {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| match url::Url::parse(u) {
            Ok(mut url) => {
                change(&mut url);
                url.to_string()
            }
            Err(_) => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_urls_carry_the_hosts_credentials() {
        let base =
            without_credentials("amqp://demofleet:secret@10.0.0.1:5672/fleet, amqp://demofleet:secret@10.0.0.2/fleet");
        assert_eq!(base, "amqp://10.0.0.1:5672/fleet,amqp://10.0.0.2/fleet");
        let url = with_credentials(&base, "agent-a", "pw");
        assert_eq!(url, "amqp://agent-a:pw@10.0.0.1:5672/fleet,amqp://agent-a:pw@10.0.0.2/fleet");
        assert_eq!(with_credentials("nats://127.0.0.1:4222", "agent-a", "pw"), "nats://agent-a:pw@127.0.0.1:4222");
        assert_eq!(password().len(), 32);
        assert_ne!(password(), password());
    }
}
