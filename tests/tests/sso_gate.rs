//! The SSO gate on preview URLs, with a real OpenID provider (oidc-provider-mock): an
//! anonymous visitor of a gated repository's demo is sent through sign-in (authorization
//! code with PKCE, state and nonce) and back to the preview; `/auth/forward` answers
//! Traefik's forwardAuth by the same rule; people off the allow-list stay out; sign-in
//! never redirects off the controller and its previews.

use std::time::Duration;

use demofleet_tests::fixtures::{self, FixtureRepo};
use demofleet_tests::oidc::{self, location, set_cookie, url_encode};
use demofleet_tests::stack::{Stack, StackOptions};
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(120);

/// Deploy a demo of a new repository; `gated` sets its repository's gate.
async fn demo(stack: &Stack, gated: bool) -> String {
    let repo_name = format!("gate-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let repo = FixtureRepo::create(&stack.repos_dir(), "fixture-owner", &repo_name);
    let put = stack.put_settings(&repo.owner, &repo.repo, &json!({ "gated": gated })).await;
    assert_eq!(put.status(), 200);
    let files = fixtures::static_site(&stack.services.base_image, "behind the gate");
    let sha = repo.commit("demo", &files.iter().map(|(p, c)| (*p, c.as_str())).collect::<Vec<_>>());
    stack.deliver("pull_request", &fixtures::pull_request("pull_request.opened.json", &repo, &sha)).await;
    let name = format!("{repo_name}-fixture-owner-pr-2");
    stack.wait_for_state(&name, "running", DEADLINE).await;
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_preview_needs_sign_in_and_forward_auth_agrees() {
    let stack = Stack::start(StackOptions::default()).await;
    let http = oidc::client();
    let issuer = stack.services.oidc_issuer.clone();
    let edge = format!("http://{}", stack.edge_addr);
    let gated = demo(&stack, true).await;
    let open = demo(&stack, false).await;
    let edge_port = stack.edge_addr.port();
    let host = format!("{gated}.localhost:{edge_port}");
    let on_edge = |path: &str, cookie: Option<&str>| {
        let mut request = http.get(format!("{edge}{path}")).header("host", host.clone());
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send()
    };

    // An ungated demo is open to anyone; the gated one sends the visitor to sign in.
    let (status, body) = stack.edge_get(&format!("{open}.localhost"), "/").await;
    assert_eq!((status, body.contains("behind the gate")), (200, true));
    let to_login = location(&on_edge("/page.html?x=1", None).await.unwrap());
    let next = format!("http://{host}/page.html?x=1");
    assert_eq!(to_login, format!("{}?next={}", stack.url("/auth/login"), url_encode(&next)));

    // Sign-in at the provider: authorization code with PKCE, state and nonce.
    let (to_provider, signin) = oidc::begin(&http, &to_login).await;
    assert!(to_provider.starts_with(&format!("{issuer}/oauth2/authorize?")), "{to_provider}");
    for part in ["code_challenge_method=S256", "code_challenge=", "state=", "nonce=", "response_type=code"] {
        assert!(to_provider.contains(part), "{part} in {to_provider}");
    }
    let callback = oidc::at_provider(&http, &issuer, &to_provider, "alice@example.com").await;
    assert!(callback.starts_with(&stack.url("/auth/callback?")), "{callback}");
    let signed_in = oidc::finish(&http, &callback, &signin).await;
    if signed_in.status() != 302 {
        panic!("sign-in failed: {}", signed_in.text().await.unwrap());
    }
    let (session, attributes) = set_cookie(&signed_in, "demofleet_session");
    assert!(attributes.contains("HttpOnly") && attributes.contains("SameSite=Lax") && attributes.contains("Max-Age="));
    assert!(!attributes.contains("Domain="), "host-only: no demo ever sees it: {attributes}");
    let to_ticket = location(&signed_in);
    let ticket_prefix = format!("http://{host}/.demofleet/auth?ticket=");
    assert!(to_ticket.starts_with(&ticket_prefix), "{to_ticket}");
    // The answer cannot be used twice.
    let replay = oidc::finish(&http, &callback, &signin).await;
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.unwrap().contains("unknown or expired sign-in"));

    // The preview trades the ticket for a cookie of its own host and goes on to the page.
    let traded = on_edge(&to_ticket[format!("http://{host}").len()..], None).await.unwrap();
    let (gate_cookie, gate_attributes) = set_cookie(&traded, "demofleet_gate");
    assert!(gate_attributes.contains("HttpOnly"), "{gate_attributes}");
    assert_eq!(location(&traded), "/page.html?x=1");
    let page = on_edge("/", Some(&gate_cookie)).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("behind the gate"));
    // The ticket is good once: brought again, the edge refuses it and says why.
    let replayed = on_edge(&to_ticket[format!("http://{host}").len()..], None).await.unwrap();
    assert_eq!(replayed.status(), 403);
    assert!(replayed.headers().get(SET_COOKIE).is_none());
    assert!(replayed.text().await.unwrap().contains("sign-in ticket has been used already"));
    // The cookie is this host's alone, and a forged one gets nowhere.
    let elsewhere = http
        .get(format!("{edge}/"))
        .header("host", format!("{open}.localhost:{edge_port}"))
        .header(COOKIE, &gate_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 200, "the open demo is open anyway");
    let forged = on_edge("/", Some(&format!("{}x", gate_cookie))).await.unwrap();
    assert_eq!(forged.status(), 302);

    // Traefik's forwardAuth, by the same rule.
    let forward = |host: String, cookie: Option<String>| {
        let mut request = http
            .get(stack.url("/auth/forward"))
            .header("x-forwarded-host", host)
            .header("x-forwarded-uri", "/page.html")
            .header("x-forwarded-proto", "http");
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        request.send()
    };
    let anonymous = forward(host.clone(), None).await.unwrap();
    assert!(location(&anonymous).starts_with(&stack.url("/auth/login?next=")));
    let passed = forward(host.clone(), Some(gate_cookie.clone())).await.unwrap();
    assert_eq!(passed.status(), 200);
    assert_eq!(passed.headers()["x-forwarded-user"], "alice@example.com");
    let ungated = forward(format!("{open}.localhost:{edge_port}"), None).await.unwrap();
    assert_eq!(ungated.status(), 200);
    let missing = http.get(stack.url("/auth/forward")).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    // Traefik's configuration puts the gated demo behind that middleware.
    let dynamic = stack.get_json("/traefik/dynamic").await;
    assert_eq!(dynamic["http"]["routers"][&gated]["middlewares"], json!(["demofleet-sso"]));
    assert_eq!(dynamic["http"]["middlewares"]["demofleet-sso"]["forwardAuth"]["address"], stack.url("/auth/forward"));
    assert!(dynamic["http"]["routers"][&open].get("middlewares").is_none());

    // Signed in already: the next preview needs no trip to the provider.
    let second = format!("http://{open}.localhost:{edge_port}/");
    let direct = http
        .get(format!("{}?next={}", stack.url("/auth/login"), url_encode(&second)))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert!(location(&direct).starts_with(&format!("http://{open}.localhost:{edge_port}/.demofleet/auth?ticket=")));

    // Only previews and the controller's own paths are destinations.
    for bad in ["https://evil.test/", "//evil.test/x", "http://user@evil.localhost.evil.test/"] {
        let refused = http.get(format!("{}?next={}", stack.url("/auth/login"), url_encode(bad))).send().await.unwrap();
        assert_eq!(refused.status(), 400, "{bad}");
    }

    // Off the allow-list: refused with a message that says so, and no session.
    let (to_provider, signin) = oidc::begin(&http, &to_login).await;
    let callback = oidc::at_provider(&http, &issuer, &to_provider, "mallory@evil.test").await;
    let refused = oidc::finish(&http, &callback, &signin).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    assert!(refused.text().await.unwrap().contains("mallory@evil.test is not allowed"));

    // The session knows who it is, groups (a claim of the ID token) included.
    let (name, groups): (Option<String>, serde_json::Value) =
        sqlx::query_as("select name, groups from sessions where email = 'alice@example.com'")
            .fetch_one(&stack.db)
            .await
            .unwrap();
    assert_eq!((name.as_deref(), groups), (Some("Test Person"), json!(["qa"])));

    // Signing out needs the session's CSRF token, and then the session is gone.
    let csrf: String = sqlx::query_scalar("select csrf from sessions where email = 'alice@example.com'")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let logout = |token: String| {
        http.post(stack.url("/auth/logout")).header(COOKIE, session.clone()).form(&[("csrf", token)]).send()
    };
    assert_eq!(logout("forged".into()).await.unwrap().status(), 403);
    let out = logout(csrf).await.unwrap();
    assert_eq!(location(&out), "/");
    assert!(set_cookie(&out, "demofleet_session").1.contains("Max-Age=0"));
    let again = http.get(&to_login).header(COOKIE, &session).send().await.unwrap();
    assert!(location(&again).starts_with(&format!("{issuer}/oauth2/authorize?")), "signed out: to the provider");
    // The preview's gate cookie ended with the session.
    let after = on_edge("/", Some(&gate_cookie)).await.unwrap();
    assert!(location(&after).starts_with(&stack.url("/auth/login?next=")), "signed out: the gate is shut");
    stack.stop().await;
}
