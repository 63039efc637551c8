//! `demofleet-controller tokens`: API tokens for scripts, as the dashboard's Tokens page
//! makes them. A token is printed once, when made; only its SHA-256 is kept.

use std::io::Read;

use anyhow::{bail, Context};
use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::context;
use crate::config::Database;
use crate::db::tokens::{self, Token};

#[derive(Debug, Subcommand)]
pub enum Tokens {
    /// Make a token called NAME and print it on standard output (the only time it is shown).
    Create {
        name: String,
        #[command(flatten)]
        database: Database,
    },
    /// List the tokens, newest first: id, name, who made it, when, last use, revoked.
    List {
        /// Revoked tokens too.
        #[arg(long)]
        all: bool,
        /// One JSON object per token and line, instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: Database,
    },
    /// Revoke a token, named by its id or by its name (when one live token has it).
    Revoke {
        token: String,
        #[command(flatten)]
        database: Database,
    },
    /// Read a token on standard input: print its name and succeed if it is live, else fail.
    Check {
        #[command(flatten)]
        database: Database,
    },
}

pub async fn run(command: Tokens) -> anyhow::Result<()> {
    match command {
        Tokens::Create { name, database } => {
            let name = tokens::check_name(&name).map_err(anyhow::Error::msg)?;
            let db = context::connect(&database).await?;
            let actor = context::actor();
            let token = crate::auth::create_api_token(&db, name, &actor).await?;
            crate::db::audit::record(&db, &actor, "token", None, serde_json::json!({ "token": name })).await?;
            println!("{token}");
        }
        Tokens::List { all, json, database } => {
            let db = context::connect(&database).await?;
            let listed: Vec<Token> =
                tokens::list(&db).await?.into_iter().filter(|t| all || t.revoked_at.is_none()).collect();
            for line in if json { json_lines(&listed) } else { table(&listed) } {
                println!("{line}");
            }
        }
        Tokens::Revoke { token, database } => {
            let db = context::connect(&database).await?;
            let id = find(&tokens::list(&db).await?, &token)?;
            if !tokens::revoke(&db, id).await? {
                bail!("token {token} was revoked meanwhile");
            }
            crate::db::audit::record(&db, &context::actor(), "revoke_token", None, serde_json::json!({ "token": id }))
                .await?;
            eprintln!("revoked token {id}");
        }
        Tokens::Check { database } => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token).context("reading the token on standard input")?;
            let db = context::connect(&database).await?;
            match crate::auth::live_api_token(&db, &token).await? {
                Some(live) => println!("{}", live.name),
                None => bail!("not a live API token"),
            }
        }
    }
    Ok(())
}

/// The live token `wanted` names: its id, or the name of exactly one live token.
fn find(all: &[Token], wanted: &str) -> anyhow::Result<Uuid> {
    let live = || all.iter().filter(|t| t.revoked_at.is_none());
    if let Ok(id) = Uuid::parse_str(wanted) {
        return match all.iter().find(|t| t.id == id) {
            Some(t) if t.revoked_at.is_some() => bail!("token {id} is already revoked"),
            Some(_) => Ok(id),
            None => bail!("no token {id}"),
        };
    }
    let named: Vec<&Token> = live().filter(|t| t.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok(one.id),
        [] => bail!("no live token is called {wanted:?} (`tokens list` shows them)"),
        _ => bail!("{} live tokens are called {wanted:?}: revoke one by its id (`tokens list`)", named.len()),
    }
}

fn when(at: Option<time::OffsetDateTime>) -> String {
    at.and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_else(|| "-".into())
}

fn table(listed: &[Token]) -> Vec<String> {
    let mut rows = vec![["id", "name", "made by", "made", "last used", "revoked"].map(String::from)];
    for t in listed {
        rows.push([
            t.id.to_string(),
            t.name.clone(),
            t.created_by.clone(),
            when(Some(t.created_at)),
            when(t.last_used_at),
            when(t.revoked_at),
        ]);
    }
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

fn json_lines(listed: &[Token]) -> Vec<String> {
    listed
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": t.id, "name": t.name, "created_by": t.created_by, "created_at": when(Some(t.created_at)),
                "last_used_at": t.last_used_at.map(|_| when(t.last_used_at)),
                "revoked_at": t.revoked_at.map(|_| when(t.revoked_at)),
            })
            .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, revoked: bool) -> Token {
        let now = time::OffsetDateTime::now_utc();
        Token {
            id: Uuid::new_v4(),
            name: name.into(),
            created_by: "cli:root".into(),
            created_at: now,
            last_used_at: None,
            revoked_at: revoked.then_some(now),
        }
    }

    #[test]
    fn a_token_is_found_by_id_or_by_a_name_one_live_token_has() {
        let (a, b, old, twin1, twin2) =
            (token("a", false), token("b", false), token("a", true), token("t", false), token("t", false));
        let all = vec![a.clone(), b.clone(), old.clone(), twin1.clone(), twin2.clone()];
        assert_eq!(find(&all, "a").unwrap(), a.id, "the revoked one of that name does not count");
        assert_eq!(find(&all, &b.id.to_string()).unwrap(), b.id);
        assert!(find(&all, &old.id.to_string()).unwrap_err().to_string().contains("already revoked"));
        assert!(find(&all, "t").unwrap_err().to_string().contains("2 live tokens"));
        assert!(find(&all, "nobody").is_err());
        assert!(find(&all, &Uuid::new_v4().to_string()).is_err());
    }

    #[test]
    fn the_table_lines_up() {
        let lines = table(&[token("a-long-name", false)]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("name"), lines[1].find("a-long-name"));
        assert!(lines[1].ends_with('-') || lines[1].contains("cli:root"));
    }
}
