//! Signing in through the controller and the real OpenID provider the tests share
//! (oidc-provider-mock): its users are made on the fly with `PUT /users/<sub>`, and its
//! authorization form is answered with `sub`, as a person would fill it in. The client
//! keeps no cookies: each hop carries the ones a browser would, so tests can leave one out.

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, Response};
use serde_json::json;

use crate::stack::Stack;

/// A client that follows no redirects, so each hop can be checked.
pub fn client() -> Client {
    crate::http_client().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `Location` of a 302 answer.
pub fn location(response: &Response) -> String {
    assert_eq!(response.status(), 302, "{response:?}");
    response.headers()[LOCATION].to_str().unwrap().to_string()
}

/// `name=value` of the cookie `name` that `response` sets, and the whole header.
pub fn set_cookie(response: &Response, name: &str) -> (String, String) {
    let header = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie set: {response:?}"));
    (header.split(';').next().unwrap().to_string(), header)
}

/// Begin signing in at `login` (a `/auth/login` URL): the provider's authorization URL, and
/// the sign-in cookie (`name=value`) that binds the attempt to this browser.
pub async fn begin(http: &Client, login: &str) -> (String, String) {
    let response = http.get(login).send().await.unwrap();
    (location(&response), set_cookie(&response, "demofleet_signin").0)
}

/// GET the provider's `callback` URL with the browser's sign-in cookie.
pub async fn finish(http: &Client, callback: &str, signin_cookie: &str) -> Response {
    http.get(callback).header(COOKIE, signin_cookie).send().await.unwrap()
}

/// At the provider: make `email` known (verified, with the groups claim) and sign in as
/// them at `authorize`; returns where the provider sends the browser back to.
pub async fn at_provider(http: &Client, issuer: &str, authorize: &str, email: &str) -> String {
    let claims = json!({ "email": email, "email_verified": true, "name": "Test Person", "groups": ["qa"] });
    at_provider_with(http, issuer, authorize, email, claims).await
}

/// At the provider: make `sub` known with `claims` and sign in as them at `authorize`.
pub async fn at_provider_with(
    http: &Client,
    issuer: &str,
    authorize: &str,
    sub: &str,
    claims: serde_json::Value,
) -> String {
    let user = http.put(format!("{issuer}/users/{sub}")).json(&claims).send().await.unwrap();
    assert_eq!(user.status(), 204);
    location(&http.post(authorize).form(&[("sub", sub)]).send().await.unwrap())
}

/// Sign `email` in to the dashboard; returns the session cookie (`name=value`).
pub async fn sign_in(stack: &Stack, email: &str) -> String {
    let http = client();
    let (to_provider, signin) = begin(&http, &stack.url("/auth/login?next=/")).await;
    let callback = at_provider(&http, &stack.services.oidc_issuer, &to_provider, email).await;
    let signed_in = finish(&http, &callback, &signin).await;
    assert_eq!(location(&signed_in), "/");
    set_cookie(&signed_in, "demofleet_session").0
}

/// Through the SSO gate of the gated preview at `host` (`name.localhost:<edge port>`) as
/// `email`: anonymous visit, sign-in at the provider, the ticket traded at the preview.
/// Returns the preview's gate cookie (`name=value`).
pub async fn through_gate(stack: &Stack, host: &str, email: &str) -> String {
    let http = client();
    let edge = format!("http://{}", stack.edge_addr);
    let to_login = location(&http.get(format!("{edge}/")).header("host", host).send().await.unwrap());
    let (to_provider, signin) = begin(&http, &to_login).await;
    let callback = at_provider(&http, &stack.services.oidc_issuer, &to_provider, email).await;
    let to_ticket = location(&finish(&http, &callback, &signin).await);
    let path = to_ticket.strip_prefix(&format!("http://{host}")).unwrap_or_else(|| panic!("{to_ticket}"));
    let traded = http.get(format!("{edge}{path}")).header("host", host).send().await.unwrap();
    set_cookie(&traded, "demofleet_gate").0
}

/// GET `path` of the controller with `cookie`.
pub async fn get_with(stack: &Stack, path: &str, cookie: &str) -> Response {
    client().get(stack.url(path)).header(COOKIE, cookie).send().await.unwrap()
}

/// Percent-encoding as `application/x-www-form-urlencoded` does it.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
