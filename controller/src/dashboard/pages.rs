//! The dashboard's pages.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::charts::{self, Bar, Span, Tone};
use super::layout::{age, render, Layout, PageError};
use crate::auth::Principal;
use crate::db::chains::{self, ChainView};
use crate::db::demos::{self, Demo, Filter};
use crate::db::hosts;
use crate::error::ApiError;
use crate::state::AppState;

/// Demos on one page of the overview.
pub const PAGE_SIZE: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/demos/{id}", get(demo))
        .route("/hosts", get(hosts_page))
        .route("/fleet", get(fleet_page))
        .route("/approvals", get(approvals))
        .route("/deliveries", get(deliveries))
        .route("/start", get(start))
        .route("/tokens", get(tokens))
        .route("/repos/{owner}/{repo}/env", get(repo_env))
}

type Page = Result<Html<String>, PageError>;

/// Run a page's body; a failure becomes an error page in the same frame.
async fn page(who: &Principal, body: impl AsyncFnOnce(&Layout) -> Result<Html<String>, ApiError>) -> Page {
    let layout = Layout::of(who);
    body(&layout).await.map_err(|err| PageError::new(layout, err))
}

struct OverviewRow {
    id: Uuid,
    name: String,
    /// The pull request's title, if an event carried it.
    title: String,
    owner: String,
    repo: String,
    pr: i64,
    author: String,
    /// The pull request and its head commit on GitHub.
    pr_link: String,
    sha: String,
    commit_link: String,
    state: String,
    host: String,
    age: String,
    url: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview<'a> {
    layout: &'a Layout,
    demos: Vec<OverviewRow>,
    q: String,
    state: String,
    states: &'static [&'static str],
    total: i64,
    page: i64,
    pages: i64,
    prev_link: String,
    next_link: String,
}

/// The overview's state filter: `active` (default), `all`, or one state.
const STATES: &[&str] = &[
    "active",
    "all",
    "pending",
    "awaiting_approval",
    "starting",
    "running",
    "sleeping",
    "failed",
    "stopping",
    "stopped",
];

#[derive(Deserialize)]
struct OverviewQuery {
    #[serde(default)]
    q: String,
    state: Option<String>,
    page: Option<i64>,
}

async fn overview(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Query(query): Query<OverviewQuery>,
) -> Page {
    page(&who, async |layout| {
        let state = query.state.unwrap_or_else(|| "active".into());
        let filter = match state.as_str() {
            "active" => Filter::Active,
            "all" => Filter::All,
            s if STATES.contains(&s) => Filter::State(s),
            other => return Err(ApiError::BadRequest(format!("no state {other:?}; choose one of {STATES:?}"))),
        };
        let number = query.page.unwrap_or(1).max(1);
        let q = query.q.trim().to_string();
        let (list, total) = demos::page(&app.db, &q, filter, PAGE_SIZE, (number - 1) * PAGE_SIZE).await?;
        let pages = ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1);
        let link = |n: i64| {
            let q: String = url::form_urlencoded::byte_serialize(q.as_bytes()).collect();
            format!("/?q={q}&state={state}&page={n}")
        };
        let mut titles = demos::titles(&app.db, &list).await?;
        let demos = list
            .into_iter()
            .map(|d| OverviewRow {
                title: titles.remove(&d.id).unwrap_or_default(),
                url: app.urls.url(&app.urls.hostname(&d.name)),
                pr_link: github_link(&app.config, &d.owner, &d.repo, &format!("pull/{}", d.pr)),
                commit_link: github_link(&app.config, &d.owner, &d.repo, &format!("commit/{}", d.sha)),
                sha: d.sha.chars().take(7).collect(),
                author: d.github_user,
                age: age(d.created_at),
                host: d.host_id.unwrap_or_else(|| "-".into()),
                id: d.id,
                name: d.name,
                owner: d.owner,
                repo: d.repo,
                pr: d.pr,
                state: d.state,
            })
            .collect();
        render(&Overview {
            layout,
            demos,
            prev_link: link(number - 1),
            next_link: link(number + 1),
            q: q.clone(),
            state: state.clone(),
            states: STATES,
            total,
            page: number,
            pages,
        })
    })
    .await
}

#[derive(Template)]
#[template(path = "demo.html")]
struct DemoPage<'a> {
    layout: &'a Layout,
    demo: Demo,
    title: String,
    host: String,
    url: String,
    chains: Vec<ChainView>,
    /// Every generation with kept log lines; the one shown (the newest unless asked), and
    /// its last lines.
    log_generations: Vec<i64>,
    log_generation: Option<i64>,
    log: Vec<crate::db::logs::LogLine>,
    /// Older lines of that generation are not shown.
    log_cut: bool,
    /// The id the live log follows after.
    log_after: i64,
}

impl DemoPage<'_> {
    /// Whether the page shows generation `generation`'s kept log.
    fn shows(&self, generation: &i64) -> bool {
        self.log_generation == Some(*generation)
    }
}

/// Kept lines shown on the demo page (the whole log is a download away).
const PAGE_LOG_LINES: i64 = 500;

/// One attempt of a step, as the demo page lists it.
struct AttemptRow {
    attempt: i64,
    host: String,
    outcome: String,
    duration_ms: i64,
    error: Option<String>,
}

/// The attempts recorded in a step's history.
fn attempts(history: &serde_json::Value) -> Vec<AttemptRow> {
    history
        .as_array()
        .map(|all| {
            all.iter()
                .map(|a| AttemptRow {
                    attempt: a["attempt"].as_i64().unwrap_or_default(),
                    host: a["host_id"].as_str().unwrap_or("-").to_string(),
                    outcome: a["outcome"].as_str().unwrap_or_default().to_string(),
                    duration_ms: a["duration_ms"].as_i64().unwrap_or_default(),
                    error: a["error"].as_str().map(String::from),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `/demos/{id}?generation=N`: the kept log of generation N instead of the newest.
#[derive(Debug, Deserialize)]
struct DemoQuery {
    generation: Option<i64>,
}

async fn demo(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<Uuid>,
    Query(query): Query<DemoQuery>,
) -> Page {
    page(&who, async |layout| {
        let demo = demos::get(&app.db, id).await?.ok_or_else(|| ApiError::NotFound(format!("no demo {id}")))?;
        let chains = crate::chain::shown(chains::timeline(&app.db, id).await?);
        let url = app.urls.url(&app.urls.hostname(&demo.name));
        let host = demo.host_id.clone().unwrap_or_else(|| "none".into());
        let title = demos::titles(&app.db, std::slice::from_ref(&demo)).await?.remove(&demo.id).unwrap_or_default();
        let log_generations = crate::db::logs::generations(&app.db, id).await?;
        let log_generation = match query.generation {
            Some(asked) if log_generations.contains(&asked) => Some(asked),
            Some(asked) => return Err(ApiError::NotFound(format!("no kept log of generation {asked}"))),
            None => log_generations.last().copied(),
        };
        let log = match log_generation {
            Some(generation) => crate::db::logs::tail(&app.db, id, generation, PAGE_LOG_LINES).await?,
            None => Vec::new(),
        };
        let log_after = sqlx::query_scalar::<_, Option<i64>>("select max(id) from demo_logs where demo_id = $1")
            .bind(id)
            .fetch_one(&app.db)
            .await?
            .unwrap_or(0);
        let log_cut = log.len() as i64 >= PAGE_LOG_LINES;
        render(&DemoPage {
            layout,
            demo,
            title,
            host,
            url,
            chains,
            log_generations,
            log_generation,
            log,
            log_cut,
            log_after,
        })
    })
    .await
}

struct HostRow {
    id: String,
    address: String,
    last_seen: String,
    alive: bool,
    /// Its demos against its capacity, and its disk, drawn.
    demos_meter: String,
    disk_meter: String,
    draining: bool,
}

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage<'a> {
    layout: &'a Layout,
    hosts: Vec<HostRow>,
}

async fn hosts_page(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "select host_id, count(*) from demos where host_id is not null and desired = 'running' group by host_id",
        )
        .fetch_all(&app.db)
        .await?;
        let hosts = hosts::list(&app.db)
            .await?
            .into_iter()
            .map(|h| {
                let seconds = (OffsetDateTime::now_utc() - h.last_seen).whole_seconds().max(0);
                let demos = counts.iter().find(|(id, _)| *id == h.id).map_or(0, |(_, n)| *n);
                let gib = |bytes: i64| bytes as f64 / 1073741824.0;
                let disk = match (h.disk_free_bytes, h.disk_total_bytes) {
                    (Some(free), Some(total)) => charts::meter(
                        &format!("disk of {}", h.id),
                        gib(total - free),
                        gib(total),
                        &format!("{:.1} GiB free of {:.1}", gib(free), gib(total)),
                    ),
                    (Some(free), None) => format!("{:.1} GiB free", gib(free)),
                    _ => "-".into(),
                };
                HostRow {
                    demos_meter: charts::meter(
                        &format!("demos on {}", h.id),
                        demos as f64,
                        f64::from(h.capacity),
                        &format!("{demos} / {}", h.capacity),
                    ),
                    disk_meter: disk,
                    alive: (seconds as f64) < app.config.host_timeout.as_secs_f64(),
                    last_seen: format!("{} ago", age(h.last_seen)),
                    id: h.id,
                    address: h.address,
                    draining: h.draining,
                }
            })
            .collect();
        render(&HostsPage { layout, hosts })
    })
    .await
}

/// A link to `owner/repo`'s `path` on GitHub's web site.
fn github_link(config: &crate::config::Config, owner: &str, repo: &str, path: &str) -> String {
    format!("{}/{owner}/{repo}/{path}", config.github_web_url.trim_end_matches('/'))
}

/// A chain's steps along time, from the chain's start: each reached step a bar of its
/// duration (to now while it runs), failed ones marked.
fn chain_timeline(chain: &ChainView) -> String {
    let now = OffsetDateTime::now_utc();
    let since = |at: OffsetDateTime| (at - chain.created_at).as_seconds_f64().max(0.0);
    let spans: Vec<Span> = chain
        .steps
        .iter()
        .filter_map(|step| {
            let started = step.queued_at.or(step.finished_at)?;
            let ended = step.finished_at.unwrap_or(now);
            let length = (ended - started).as_seconds_f64().max(0.0);
            let tone = match step.status.as_str() {
                "failed" => Tone::Bad,
                "succeeded" => Tone::Good,
                "skipped" => Tone::Muted,
                _ => Tone::Normal,
            };
            let note = match step.status.as_str() {
                "succeeded" => charts::seconds(length),
                status => format!("{status}, {}", charts::seconds(length)),
            };
            Some(Span { label: step.name.clone(), start: since(started), length, tone, note })
        })
        .collect();
    let title = format!("{} chain of generation {}: its steps along time", chain.kind, chain.generation);
    charts::timeline(&title, &spans)
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage<'a> {
    layout: &'a Layout,
    states: String,
    deliveries: String,
    outcomes: String,
    hours: i64,
}

/// Webhook deliveries are drawn over this many hours, in columns of a quarter of an hour.
const FLEET_HOURS: i64 = 6;

async fn fleet_page(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| {
        let by_state: Vec<(String, i64)> =
            sqlx::query_as("select state, count(*) from demos group by state order by 2 desc, 1").fetch_all(&app.db).await?;
        let tone = |state: &str| match state {
            "running" => Tone::Good,
            "failed" => Tone::Bad,
            "stopped" | "sleeping" => Tone::Muted,
            _ => Tone::Normal,
        };
        let bars: Vec<Bar> =
            by_state.iter().map(|(s, n)| Bar { label: s.clone(), value: *n as f64, tone: tone(s) }).collect();
        let states = charts::bars("Demos by state", &bars);
        // Quarter hours, oldest first; the index `webhook_deliveries_received` keeps this to the window.
        let counts: Vec<(i32, i64)> = sqlx::query_as(
            "select (extract(epoch from now() - received_at) / 900)::int4 as ago, count(*) from webhook_deliveries
             where received_at > now() - make_interval(hours => $1::int4) group by 1",
        )
        .bind(FLEET_HOURS)
        .fetch_all(&app.db)
        .await?;
        let quarters = (FLEET_HOURS * 4) as i32;
        let columns: Vec<(String, i64)> = (0..quarters)
            .rev()
            .map(|ago| {
                let n = counts.iter().find(|(a, _)| *a == ago).map_or(0, |(_, n)| *n);
                let minutes = i64::from(ago + 1) * 15;
                let label = if minutes % 60 == 0 { format!("-{} h", minutes / 60) } else { format!("-{minutes} min") };
                (label, n)
            })
            .collect();
        let deliveries = charts::columns("Webhook deliveries per quarter hour", &columns, 4);
        let by_outcome: Vec<(String, i64)> = sqlx::query_as(
            "select outcome, count(*) from webhook_deliveries where received_at > now() - make_interval(hours => $1::int4)
             group by 1 order by 2 desc, 1",
        )
        .bind(FLEET_HOURS)
        .fetch_all(&app.db)
        .await?;
        let outcome_tone = |o: &str| if o.contains("fail") || o.contains("refused") { Tone::Bad } else { Tone::Normal };
        let bars: Vec<Bar> =
            by_outcome.iter().map(|(o, n)| Bar { label: o.clone(), value: *n as f64, tone: outcome_tone(o) }).collect();
        let outcomes = charts::bars("Webhook deliveries by outcome", &bars);
        render(&FleetPage { layout, states, deliveries, outcomes, hours: FLEET_HOURS })
    })
    .await
}

#[derive(Template)]
#[template(path = "approvals.html")]
struct ApprovalsPage<'a> {
    layout: &'a Layout,
    demos: Vec<Demo>,
}

async fn approvals(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| {
        let demos = sqlx::query_as("select * from demos where state = 'awaiting_approval' order by updated_at")
            .fetch_all(&app.db)
            .await?;
        render(&ApprovalsPage { layout, demos })
    })
    .await
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event: String,
    outcome: String,
    detail: Option<String>,
    demo: Option<Uuid>,
    demo_name: String,
    received: String,
    /// It asked for work, so it can be delivered again.
    redeliverable: bool,
}

#[derive(Template)]
#[template(path = "deliveries.html")]
struct DeliveriesPage<'a> {
    layout: &'a Layout,
    deliveries: Vec<DeliveryRow>,
}

async fn deliveries(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| {
        let deliveries = sqlx::query_as(
            "select w.delivery_id as id, w.event || coalesce('.' || w.action, '') as event, w.outcome, w.detail,
                    w.demo_id as demo, coalesce(d.name, '') as demo_name,
                    to_char(w.received_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as received,
                    w.item is not null as redeliverable
             from webhook_deliveries w left join demos d on d.id = w.demo_id
             order by w.received_at desc limit 100",
        )
        .fetch_all(&app.db)
        .await?;
        render(&DeliveriesPage { layout, deliveries })
    })
    .await
}

#[derive(Template)]
#[template(path = "start.html")]
struct StartPage<'a> {
    layout: &'a Layout,
}

async fn start(Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| render(&StartPage { layout })).await
}

pub struct TokenRow {
    pub id: Uuid,
    pub name: String,
    pub created_by: String,
    pub created: String,
    pub last_used: String,
    pub revoked: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct TokensPage<'a> {
    pub layout: &'a Layout,
    pub tokens: Vec<TokenRow>,
    /// A token just made, shown this once.
    pub created: Option<String>,
}

pub async fn token_rows(db: &sqlx::PgPool) -> sqlx::Result<Vec<TokenRow>> {
    Ok(crate::db::tokens::list(db)
        .await?
        .into_iter()
        .map(|token| TokenRow {
            id: token.id,
            name: token.name,
            created_by: token.created_by,
            created: format!("{} ago", age(token.created_at)),
            last_used: token.last_used_at.map_or("never".into(), |t| format!("{} ago", age(t))),
            revoked: token.revoked_at.is_some(),
        })
        .collect())
}

async fn tokens(State(app): State<AppState>, Extension(who): Extension<Principal>) -> Page {
    page(&who, async |layout| {
        let tokens = token_rows(&app.db).await?;
        render(&TokensPage { layout, tokens, created: None })
    })
    .await
}

pub struct SecretRow {
    pub name: String,
    pub updated_by: String,
    pub age: String,
}

#[derive(Template)]
#[template(path = "repo_env.html")]
struct RepoEnvPage<'a> {
    layout: &'a Layout,
    owner: String,
    repo: String,
    /// Names only: a value is never shown back.
    names: Vec<SecretRow>,
    for_forks: bool,
}

/// A repository's secrets (their names) and the forms that set and remove them.
async fn repo_env(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
) -> Page {
    page(&who, async |layout| {
        demofleet_common::names::validate_owner(&owner).map_err(ApiError::BadRequest)?;
        demofleet_common::names::validate_repo(&repo).map_err(ApiError::BadRequest)?;
        let names = crate::db::secrets::names(&app.db, &owner, &repo)
            .await?
            .into_iter()
            .map(|s| SecretRow { name: s.name, updated_by: s.updated_by, age: format!("{} ago", age(s.updated_at)) })
            .collect();
        let for_forks = crate::db::settings::get(&app.db, &owner, &repo).await?.secrets_for_forks;
        render(&RepoEnvPage { layout, owner, repo, names, for_forks })
    })
    .await
}
