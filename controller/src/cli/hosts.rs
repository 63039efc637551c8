//! `demofleet-controller hosts`: enrol a host (its broker and NATS users made, its agent's
//! settings printed once), revoke one, list them.

use clap::Subcommand;
use time::format_description::well_known::Rfc3339;

use demofleet_common::messaging::Messaging;

use super::context;
use crate::config::{Database, EnrolmentSettings};
use crate::db::enrolments::{self, HostEnrolment};
use crate::enrolment::Enrolment;

/// What enrolling and revoking need: the database, the brokers, and where agents reach them.
#[derive(Debug, Clone, clap::Args)]
pub struct HostSettings {
    #[command(flatten)]
    pub database: Database,
    #[command(flatten)]
    pub messaging: Messaging,
    #[command(flatten)]
    pub enrolment: EnrolmentSettings,
}

#[derive(Debug, Subcommand)]
pub enum Hosts {
    /// Enrol host ID (again, with new credentials, if it was) and print its agent's settings
    /// as an environment file (the only time its passwords are shown).
    Enroll {
        id: String,
        /// The settings as one JSON object instead.
        #[arg(long)]
        json: bool,
        /// Change nothing and print nothing if ID is enrolled already and not revoked: its
        /// credentials stay as they are (for scripts run again, such as `scripts/up`).
        #[arg(long)]
        unless_enrolled: bool,
        #[command(flatten)]
        settings: HostSettings,
    },
    /// Revoke host ID: its credentials stop working, its demos are placed elsewhere, it
    /// leaves the Hosts page.
    Revoke {
        id: String,
        #[command(flatten)]
        settings: HostSettings,
    },
    /// List the enrolments: host, broker user, when and by whom enrolled, revoked.
    List {
        /// One JSON object per host and line, instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: Database,
    },
}

pub async fn run(command: Hosts) -> anyhow::Result<()> {
    match command {
        Hosts::Enroll { id, json, unless_enrolled, settings } => {
            let enrolment = enrolment(&settings).await?;
            if unless_enrolled && enrolments::get(&enrolment.db, &id).await?.is_some_and(|e| e.revoked_at.is_none()) {
                eprintln!("host {id} is enrolled already: nothing changed");
                return Ok(());
            }
            let agent = enrolment.enrol(&id, &context::actor()).await?;
            if json {
                println!("{}", serde_json::to_string(&agent)?);
            } else {
                print!("{}", agent.env_file());
            }
            if settings.enrolment.amqp_management_url.is_none() {
                eprintln!(
                    "note: DEMOFLEET_AMQP_MANAGEMENT_URL is unset: make broker user {} yourself",
                    enrolment.user_of(&id)
                );
            }
        }
        Hosts::Revoke { id, settings } => {
            enrolment(&settings).await?.revoke(&id, &context::actor()).await?;
            eprintln!("revoked host {id}: its demos move elsewhere at the controller's next tick");
        }
        Hosts::List { json, database } => {
            let db = context::connect(&database).await?;
            let listed = enrolments::list(&db).await?;
            for line in if json { json_lines(&listed) } else { table(&listed) } {
                println!("{line}");
            }
        }
    }
    Ok(())
}

async fn enrolment(settings: &HostSettings) -> anyhow::Result<Enrolment> {
    Ok(Enrolment {
        db: context::connect(&settings.database).await?,
        settings: settings.enrolment.clone(),
        messaging: settings.messaging.clone(),
    })
}

fn when(at: Option<time::OffsetDateTime>) -> String {
    at.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "-".into())
}

fn table(listed: &[HostEnrolment]) -> Vec<String> {
    let mut rows = vec![["host", "broker user", "enrolled", "by", "revoked"].map(String::from)];
    for e in listed {
        rows.push([
            e.host_id.clone(),
            e.amqp_user.clone().unwrap_or_else(|| "-".into()),
            when(Some(e.enrolled_at)),
            e.enrolled_by.clone(),
            when(e.revoked_at),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

fn json_lines(listed: &[HostEnrolment]) -> Vec<String> {
    listed.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect()
}
