//! Sign-in under attack (issue 23, point 6), against the real OpenID provider: redirects
//! off-site through `next`, login CSRF with a stranger's callback, an email the provider
//! does not say is verified, `/auth/forward` asked about hosts the fleet does not serve,
//! gate tickets replayed, gate cookies kept after signing out, and the dashboard framed by
//! another site. Each is refused with a status and a message that say what is wrong, and
//! the honest path beside it still works.

use demofleet_tests::oidc::{self, location, set_cookie, url_encode};
use demofleet_tests::stack::{Stack, StackOptions};
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::json;

/// `/auth/forward` as Traefik calls it for `host` and `uri`, with `cookie`.
async fn forward(stack: &Stack, host: &str, uri: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = oidc::client()
        .get(stack.url("/auth/forward"))
        .header("x-forwarded-host", host)
        .header("x-forwarded-uri", uri)
        .header("x-forwarded-proto", "http");
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sign_ins_are_refused_and_honest_ones_still_work() {
    let stack = Stack::start(StackOptions { agents: 0, ..Default::default() }).await;
    let http = oidc::client();
    let issuer = stack.services.oidc_issuer.clone();
    let login = |next: &str| format!("{}?next={}", stack.url("/auth/login"), url_encode(next));

    // `next` is a path of this site, as a browser reads it, or a preview: nothing else.
    for bad in [
        "/%09/evil.example/",
        "/\t/evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "/%5Cevil.example/",
        "/%2F/evil.example/",
        "https://evil.example/",
        "javascript:alert(1)",
        "http://demo-o-pr-1.localhost.evil.example/",
    ] {
        let refused = http.get(login(bad)).send().await.unwrap();
        assert_eq!(refused.status(), 400, "{bad:?}");
        assert!(refused.headers().get("location").is_none(), "{bad:?}");
        let message = refused.text().await.unwrap();
        assert!(message.contains("`next` must be a path of this controller"), "{bad:?}: {message}");
    }
    let (to_provider, _) = oidc::begin(&http, &login("/demos?page=2")).await;
    assert!(to_provider.starts_with(&format!("{issuer}/oauth2/authorize?")), "{to_provider}");

    // Login CSRF: mallory signs in at the provider and sends alice the callback URL. Alice's
    // browser lacks mallory's sign-in cookie (or has one of its own): refused, no session.
    let (mallory_authorize, mallory_signin) = oidc::begin(&http, &login("/")).await;
    let planted = oidc::at_provider(&http, &issuer, &mallory_authorize, "mallory@example.com").await;
    let (alice_authorize, alice_signin) = oidc::begin(&http, &login("/")).await;
    assert_ne!(alice_signin, mallory_signin, "each browser gets its own value");
    for cookie in [None, Some(alice_signin.as_str()), Some("demofleet_signin=forged")] {
        let mut request = http.get(&planted);
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let refused = request.send().await.unwrap();
        // The first try uses up the planted attempt; later ones find it gone.
        let status = refused.status();
        assert!(refused
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("demofleet_session=")));
        let message = refused.text().await.unwrap();
        match cookie {
            None => {
                assert_eq!(status, 403, "{message}");
                assert!(message.contains("not begun in this browser"), "{message}");
            }
            Some(_) => {
                assert_eq!(status, 400, "{message}");
                assert!(message.contains("unknown or expired sign-in"), "{message}");
            }
        }
    }
    // A fresh planted attempt, brought with alice's own cookie, is refused as well.
    let (mallory_authorize, _) = oidc::begin(&http, &login("/")).await;
    let planted = oidc::at_provider(&http, &issuer, &mallory_authorize, "mallory@example.com").await;
    let refused = oidc::finish(&http, &planted, &alice_signin).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("not begun in this browser"));
    // Alice's own sign-in, in her own browser, goes through.
    let alice_callback = oidc::at_provider(&http, &issuer, &alice_authorize, "alice@example.com").await;
    let signed_in = oidc::finish(&http, &alice_callback, &alice_signin).await;
    assert_eq!(location(&signed_in), "/");
    let (session, _) = set_cookie(&signed_in, "demofleet_session");
    assert!(set_cookie(&signed_in, "demofleet_signin").1.contains("Max-Age=0"), "the sign-in cookie is spent");
    let sessions: Vec<String> = sqlx::query_scalar("select email from sessions").fetch_all(&stack.db).await.unwrap();
    assert_eq!(sessions, ["alice@example.com"], "no session for mallory");

    // An address in an allowed domain that the provider does not say is verified.
    let (authorize, signin) = oidc::begin(&http, &login("/")).await;
    let unverified = json!({ "email": "eve@example.com", "name": "Eve" });
    let callback = oidc::at_provider_with(&http, &issuer, &authorize, "eve@example.com", unverified).await;
    let refused = oidc::finish(&http, &callback, &signin).await;
    assert_eq!(refused.status(), 403);
    assert!(refused
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .all(|c| !c.to_str().unwrap().starts_with("demofleet_session=")));
    let message = refused.text().await.unwrap();
    assert!(message.contains("eve@example.com is not allowed in") && message.contains("email_verified"), "{message}");
    let (authorize, signin) = oidc::begin(&http, &login("/")).await;
    let said_false = json!({ "email": "eve@example.com", "email_verified": false });
    let callback = oidc::at_provider_with(&http, &issuer, &authorize, "eve@example.com", said_false).await;
    assert_eq!(oidc::finish(&http, &callback, &signin).await.status(), 403);

    // `/auth/forward` answers for previews of this fleet only, whatever X-Forwarded-Host says.
    let edge_port = stack.edge_addr.port();
    for host in ["evil.example", "demo-o-pr-1.localhost.evil.example", "a.b.localhost", "localhost", "x y.localhost"] {
        let refused = forward(&stack, host, "/", Some(&session)).await;
        assert_eq!(refused.status(), 403, "{host}");
        assert!(refused.headers().get("location").is_none(), "{host}");
        let message = refused.text().await.unwrap();
        assert!(message.contains("is not a preview of this fleet"), "{host}: {message}");
    }
    let bad_uri = forward(&stack, &format!("demo-o-pr-1.localhost:{edge_port}"), "//evil.example/", None).await;
    assert_eq!(bad_uri.status(), 400);
    assert!(bad_uri.text().await.unwrap().contains("X-Forwarded-Uri must be a path"));
    // A preview host (not deployed: it counts as gated) is sent to sign in.
    let host = format!("hostile-o-pr-1.localhost:{edge_port}");
    let to_login = location(&forward(&stack, &host, "/page", None).await);
    assert_eq!(to_login, login(&format!("http://{host}/page")));

    // Gate tickets are good once: the replay is refused, the cookie of the first trade works.
    let to_ticket =
        location(&http.get(login(&format!("http://{host}/page"))).header(COOKIE, &session).send().await.unwrap());
    let ticket_path = to_ticket.strip_prefix(&format!("http://{host}")).unwrap().to_string();
    let traded = forward(&stack, &host, &ticket_path, None).await;
    assert_eq!(location(&traded), "/page");
    let (gate_cookie, _) = set_cookie(&traded, "demofleet_gate");
    let replayed = forward(&stack, &host, &ticket_path, None).await;
    assert_eq!(replayed.status(), 403);
    assert!(replayed.headers().get(SET_COOKIE).is_none());
    assert!(replayed.text().await.unwrap().contains("sign-in ticket has been used already"));
    let passed = forward(&stack, &host, "/page", Some(&gate_cookie)).await;
    assert_eq!(passed.status(), 200);
    assert_eq!(passed.headers()["x-forwarded-user"], "alice@example.com");

    // The dashboard cannot be framed by another site.
    for (path, cookie) in [("/", Some(session.as_str())), ("/", None), ("/api/demos", None)] {
        let mut request = http.get(stack.url(path));
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["x-frame-options"], "DENY", "{path}");
        let csp = response.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }

    // Signing out ends the gate cookies made in that session, and tickets not yet traded.
    let unused =
        location(&http.get(login(&format!("http://{host}/later"))).header(COOKIE, &session).send().await.unwrap());
    let unused_path = unused.strip_prefix(&format!("http://{host}")).unwrap().to_string();
    let csrf: String = sqlx::query_scalar("select csrf from sessions where email = 'alice@example.com'")
        .fetch_one(&stack.db)
        .await
        .unwrap();
    let out =
        http.post(stack.url("/auth/logout")).header(COOKIE, &session).form(&[("csrf", csrf)]).send().await.unwrap();
    assert_eq!(location(&out), "/");
    let after = forward(&stack, &host, "/page", Some(&gate_cookie)).await;
    assert_eq!(location(&after), login(&format!("http://{host}/page")), "signed out: sign in again");
    assert!(set_cookie(&after, "demofleet_gate").1.contains("Max-Age=0"), "the dead cookie is removed");
    let late_trade = forward(&stack, &host, &unused_path, None).await;
    assert!(location(&late_trade).starts_with(&stack.url("/auth/login?next=")));
    assert!(late_trade.headers().get(SET_COOKIE).is_none(), "no gate cookie for a session that ended");
    stack.stop().await;
}
