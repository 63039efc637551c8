//! The dashboard and the JSON API behind sign-in: anonymous requests get a login redirect
//! or 401 and never data; a signed-in admin sees and runs the fleet through forms that
//! carry a CSRF token; API tokens made in the dashboard open the API until revoked.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::oidc::{self, get_with, location, url_encode};
use demofleet_tests::stack::{Stack, StackOptions};
use reqwest::header::COOKIE;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

/// Where a 303 answer sends the browser.
fn location_of(response: &reqwest::Response) -> String {
    assert_eq!(response.status(), 303, "{response:?}");
    response.headers()["location"].to_str().unwrap().to_string()
}

/// The session's CSRF token, as its pages carry it in every form.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_is_run_from_the_dashboard_by_signed_in_admins_only() {
    let stack = Stack::start(StackOptions::default()).await;
    let http = oidc::client();
    let demo_id = Uuid::new_v4();

    // Anonymous: a redirect to sign in from every page and form, 401 from every API route.
    for path in
        ["/", "/hosts", "/fleet", "/approvals", "/deliveries", "/start", "/tokens", &format!("/demos/{demo_id}")]
    {
        let response = http.get(stack.url(path)).send().await.unwrap();
        let next = url_encode(path);
        assert_eq!(location(&response), format!("/auth/login?next={next}"), "{path}");
    }
    for path in [format!("/demos/{demo_id}/stop"), "/start".into(), "/tokens".into(), "/hosts/h/drain".into()] {
        let response = http.post(stack.url(&path)).form(&[("csrf", "x")]).send().await.unwrap();
        assert!(location(&response).starts_with("/auth/login?next="), "{path}");
    }
    let api_gets = [
        "/api/demos".to_string(),
        "/api/hosts".into(),
        "/api/deliveries".into(),
        format!("/api/demos/{demo_id}"),
        format!("/api/demos/{demo_id}/logs"),
        "/api/repos/o/r/settings".into(),
    ];
    for path in &api_gets {
        let response = http.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        assert!(response.text().await.unwrap().contains("authentication required"), "{path}");
        let forged = http.get(stack.url(path)).bearer_auth("dft_forged").send().await.unwrap();
        assert_eq!(forged.status(), 401, "{path}");
    }
    for path in ["/api/demos".to_string(), format!("/api/demos/{demo_id}/stop"), "/api/hosts/h/drain".into()] {
        assert_eq!(http.post(stack.url(&path)).send().await.unwrap().status(), 401, "{path}");
    }

    // Signed in: the overview, and a demo started by hand from a pull request reference,
    // quietly (GitHub not told), approved by the one who started it.
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let overview = get_with(&stack, "/", &session).await;
    assert_eq!(overview.status(), 200);
    let page = overview.text().await.unwrap();
    assert!(page.contains("<h1>Demos</h1>") && page.contains("admin@example.com"), "{page}");
    let csrf = csrf_of(&page);

    let repo_name = format!("dash-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let files = fixtures::static_site(&stack.services.base_image, "started by hand");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    stack.github.add_pull(&fixtures::pull_request("pull_request.opened.json", &repo, &sha)["pull_request"]);
    let form = |path: &str, fields: Vec<(&str, String)>| {
        http.post(stack.url(path)).header(COOKIE, &session).form(&fields).send()
    };
    let reference = format!("fixture-owner/{repo_name}#2");
    let forged = form("/start", vec![("csrf", "forged".into()), ("reference", reference.clone())]).await.unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(stack.count("demos").await, 0, "nothing started without the CSRF token");
    let bad = form("/start", vec![("csrf", csrf.clone()), ("reference", "not a pull request".into())]).await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("is not a pull request"));
    let started = form("/start", vec![("csrf", csrf.clone()), ("reference", reference)]).await.unwrap();
    assert_eq!(started.status(), 303);
    let detail_path = started.headers()["location"].to_str().unwrap().to_string();
    let name = format!("{repo_name}-fixture-owner-pr-2");
    let demo = stack.wait_for_state(&name, "running", DEADLINE).await;
    let id = demo["id"].as_str().unwrap().to_string();
    assert_eq!(detail_path, format!("/demos/{id}"));
    let (approved_by, notify): (Option<String>, bool) =
        sqlx::query_as("select approved_by, notify from demos where id = $1")
            .bind(Uuid::parse_str(&id).unwrap())
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!((approved_by.as_deref(), notify), (Some("admin@example.com"), false));
    assert!(stack.github.comments(&format!("fixture-owner/{repo_name}"), 2).is_empty(), "GitHub not told");
    let starter: String = sqlx::query_scalar("select actor from audit_events where action = 'start' and demo_id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(starter, "admin@example.com");

    // It is on the overview (search and state filters), and its page shows its chain.
    let found = get_with(&stack, &format!("/?q={repo_name}&state=running"), &session).await.text().await.unwrap();
    assert!(found.contains(&format!("href=\"/demos/{id}\"")) && found.contains("1 demo."), "{found}");
    let none = get_with(&stack, "/?q=no-such-repo", &session).await.text().await.unwrap();
    assert!(none.contains("0 demos."));
    let detail = get_with(&stack, &detail_path, &session).await.text().await.unwrap();
    assert!(detail.contains(&format!("<h1>{name}</h1>")) && detail.contains("deploy, generation 1: succeeded"));
    assert!(detail.contains("<h2>Live log</h2>") && detail.contains(&format!("/api/demos/{id}/logs")));
    let host = stack.agents[0].host_id.clone();
    assert!(detail.contains(&format!("attempt 1 on {host}: succeeded in ")), "each attempt is listed: {detail}");

    // The hosts page drains and undrains.
    let hosts = get_with(&stack, "/hosts", &session).await.text().await.unwrap();
    assert!(hosts.contains(&format!("Drain {host}")), "{hosts}");
    let drained = form(&format!("/hosts/{host}/drain"), vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(drained.status(), 303);
    let listed = stack.get_json("/api/hosts").await;
    assert_eq!(listed[0]["draining"], true);
    form(&format!("/hosts/{host}/undrain"), vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(stack.get_json("/api/hosts").await[0]["draining"], false);

    // The deliveries page shows what came in.
    let (delivery, _) = stack.deliver("ping", &fixtures::payload("ping.json")).await;
    let deliveries = get_with(&stack, "/deliveries", &session).await.text().await.unwrap();
    assert!(deliveries.contains(&delivery), "{deliveries}");
    // A delivery that asked for work can be delivered again: a new delivery, a new generation.
    let (opened, _) =
        stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let generation = stack.wait_for_state(&name, "running", DEADLINE).await["generation"].as_i64().unwrap();
    let deliveries = get_with(&stack, "/deliveries", &session).await.text().await.unwrap();
    assert!(deliveries.contains(&format!("action=\"/deliveries/{opened}/redeliver\"")), "{deliveries}");
    assert!(!deliveries.contains(&format!("/deliveries/{delivery}/redeliver")), "a ping asked for nothing");
    let again = form(&format!("/deliveries/{opened}/redeliver"), vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(location_of(&again), "/deliveries");
    let (outcome, actor): (String, String) = sqlx::query_as(
        "select w.outcome, a.actor from webhook_deliveries w
         join audit_events a on a.detail->>'delivery' = w.delivery_id where w.delivery_id = $1",
    )
    .bind(format!("{opened}.redelivery-1"))
    .fetch_one(&stack.db)
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), actor.as_str()), ("deploy_queued", "admin@example.com"));
    let redeployed = stack.wait_for_state(&name, "running", DEADLINE).await;
    assert!(redeployed["generation"].as_i64().unwrap() > generation);
    let nothing = stack.post(&format!("/api/deliveries/{delivery}/redeliver")).await;
    assert_eq!(nothing.status(), 409);
    assert!(nothing.text().await.unwrap().contains("nothing to deliver again"));

    // An API token made in the dashboard opens the API, until revoked.
    let made = form("/tokens", vec![("csrf", csrf.clone()), ("name", "ci script".into())]).await.unwrap();
    assert_eq!(made.status(), 200);
    let page = made.text().await.unwrap();
    let token = page.split("<code id=\"new-token\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert!(token.starts_with("dft_"));
    let with_token = http.get(stack.url("/api/demos")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(with_token.status(), 200);
    let stored: i64 = sqlx::query_scalar("select count(*) from api_tokens where token_hash = sha256($1::bytea)")
        .bind(token.as_bytes())
        .fetch_one(&stack.db)
        .await
        .unwrap();
    assert_eq!(stored, 1, "kept as a hash only");
    let tokens = get_with(&stack, "/tokens", &session).await.text().await.unwrap();
    assert!(!tokens.contains(&token), "shown once only");
    let token_id: Uuid =
        sqlx::query_scalar("select id from api_tokens where name = 'ci script'").fetch_one(&stack.db).await.unwrap();
    form(&format!("/tokens/{token_id}/revoke"), vec![("csrf", csrf.clone())]).await.unwrap();
    let revoked = http.get(stack.url("/api/demos")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(revoked.status(), 401);

    // The API with a session (the dashboard's scripts) wants the CSRF token for changes.
    let redeploy = stack.url(&format!("/api/demos/{id}/redeploy"));
    let without = http.post(&redeploy).header(COOKIE, &session).send().await.unwrap();
    assert_eq!(without.status(), 403);
    let reading = http.get(stack.url("/api/demos")).header(COOKIE, &session).send().await.unwrap();
    assert_eq!(reading.status(), 200);

    // Stopping from the demo's page: it leaves the overview, and shows under "all".
    let no_token = form(&format!("/demos/{id}/stop"), vec![("csrf", "forged".into())]).await.unwrap();
    assert_eq!(no_token.status(), 403);
    assert_eq!(stack.demo(&name).await.unwrap()["desired"], "running");
    let stopped = form(&format!("/demos/{id}/stop"), vec![("csrf", csrf.clone())]).await.unwrap();
    assert_eq!(stopped.status(), 303);
    stack.wait_for_state(&name, "stopped", DEADLINE).await;
    let active = get_with(&stack, "/", &session).await.text().await.unwrap();
    assert!(!active.contains(&format!("href=\"/demos/{id}\"")), "a stopped demo leaves the overview");
    let all = get_with(&stack, "/?state=all", &session).await.text().await.unwrap();
    assert!(all.contains(&format!("href=\"/demos/{id}\"")));
    let unknown = get_with(&stack, "/?state=exploded", &session).await;
    assert_eq!(unknown.status(), 400);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_pages_through_many_demos() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    sqlx::query(
        "insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user, created_at)
         select gen_random_uuid(), 'many', 'repo', n, 'repo-many-pr-' || n, 'running', 'running', 'x', 'x', 'x',
                now() - make_interval(secs => n)
         from generate_series(1, 120) n",
    )
    .execute(&stack.db)
    .await
    .unwrap();
    let session = oidc::sign_in(&stack, "admin@example.com").await;
    let first = get_with(&stack, "/", &session).await.text().await.unwrap();
    assert!(first.contains("120 demos, page 1 of 3.") && first.contains("repo-many-pr-1<"), "{first}");
    assert!(!first.contains("repo-many-pr-51<") && first.contains("rel=\"next\"") && !first.contains("rel=\"prev\""));
    let third = get_with(&stack, "/?q=&state=active&page=3", &session).await.text().await.unwrap();
    assert!(third.contains("page 3 of 3") && third.contains("repo-many-pr-120<") && !third.contains("rel=\"next\""));
    stack.stop().await;
}
