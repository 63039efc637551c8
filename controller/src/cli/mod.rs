//! The `demofleet-controller` program. Without a subcommand it runs the controller, as it
//! always has; its subcommands administer a fleet without SQL, each in a module of its own
//! beside this one. A subcommand takes only the settings it needs (the database's, mostly),
//! as flags or the same `DEMOFLEET_*` variables the controller reads.
//!
//! # Layout
//! - Here: the command line, and which subcommand runs what.
//! - [`context`]: what every subcommand shares: the database, and who acts (for the audit).
//! - [`tokens`]: API tokens for scripts (`tokens create`, `list`, `revoke`, `check`).
//! - [`deploy_local`]: a folder on this machine deployed as a pull request's demo, through a
//!   local bare repository and a signed webhook (`deploy-local DIR`).
//! - [`hosts`]: enrolment of hosts (`hosts enroll`, `revoke`, `list`).

pub mod context;
pub mod deploy_local;
pub mod hosts;
pub mod tokens;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, Database};

/// The command line: a subcommand, or the controller's own settings.
#[derive(Debug, Parser)]
#[command(
    name = "demofleet-controller",
    version,
    about = "demofleet controller: runs the controller, or (with a subcommand) administers the fleet",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub config: Config,
}

// Parsed once per run: the size of the larger variants (their broker settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the database migrations and exit.
    Migrate(Database),
    /// API tokens for scripts: make, list, revoke or check them.
    #[command(subcommand)]
    Tokens(tokens::Tokens),
    /// Deploy a folder on this machine as a pull request's demo, as GitHub would (a local
    /// bare repository and a signed `pull_request` webhook); run again to update it.
    DeployLocal(Box<deploy_local::DeployLocal>),
    /// Hosts of the fleet: enrol, revoke or list them.
    #[command(subcommand)]
    Hosts(hosts::Hosts),
}

/// The program: logs to stderr (`DEMOFLEET_LOG`); runs the controller until SIGTERM or
/// SIGINT, or the subcommand asked for.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A subcommand's output is for people and scripts: only warnings are logged beside it.
    let default_filter = if cli.command.is_some() { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEMOFLEET_LOG").unwrap_or_else(|_| default_filter.into()),
        )
        .init();
    match cli.command {
        None if cli.config.migrate_only => crate::migrate(&cli.config.database_url).await,
        None => crate::run(cli.config, demofleet_common::signal::shutdown()).await,
        Some(Command::Migrate(database)) => {
            crate::migrate(&database.database_url).await.context("migrating")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Some(Command::Tokens(command)) => tokens::run(command).await,
        Some(Command::DeployLocal(args)) => deploy_local::run(*args).await,
        Some(Command::Hosts(command)) => hosts::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("demofleet-controller").chain(args.iter().copied()))
    }

    #[test]
    fn no_subcommand_runs_the_controller_with_its_settings() {
        let cli = parse(&["--webhook-secret", "s", "--listen", "127.0.0.1:9000"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.config.listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn subcommands_take_their_own_settings() {
        let cli = parse(&["tokens", "create", "deploy-bot", "--database-url", "postgres://x/y"]).unwrap();
        let Some(Command::Tokens(tokens::Tokens::Create { name, database })) = cli.command else {
            panic!("tokens create: {cli:?}")
        };
        assert_eq!((name.as_str(), database.database_url.as_str()), ("deploy-bot", "postgres://x/y"));
        assert!(matches!(parse(&["migrate"]).unwrap().command, Some(Command::Migrate(_))));
        assert!(
            parse(&["--listen", "127.0.0.1:9000", "migrate"]).is_err(),
            "the controller's flags are not a subcommand's"
        );
        assert!(parse(&["tokens"]).is_err(), "tokens needs a subcommand");
        let cli =
            parse(&["deploy-local", "examples/web-app", "--pr", "3", "--git-url", "file:///g/{owner}/{repo}.git"])
                .unwrap();
        let Some(Command::DeployLocal(args)) = cli.command else { panic!("deploy-local: {cli:?}") };
        assert_eq!((args.dir.to_str(), args.pr, args.owner.as_str()), (Some("examples/web-app"), 3, "local"));
        let cli = parse(&["hosts", "enroll", "host-a", "--json", "--agent-user-prefix", "f1-"]).unwrap();
        let Some(Command::Hosts(hosts::Hosts::Enroll { id, json, unless_enrolled, settings })) = cli.command else {
            panic!("hosts enroll: {cli:?}")
        };
        assert_eq!((id.as_str(), json, settings.enrolment.agent_user_prefix.as_str()), ("host-a", true, "f1-"));
        assert!(!unless_enrolled);
        let cli = parse(&["hosts", "enroll", "--unless-enrolled", "host-a"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Hosts(hosts::Hosts::Enroll { unless_enrolled: true, .. }))));
    }
}
