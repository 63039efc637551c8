//! The SSO gate on preview URLs of gated repositories. Demos are other people's code, so no
//! cookie of the controller's domain ever reaches them: after sign-in the visitor is sent to
//! the preview's own host with a short-lived signed ticket, which the gate (edge proxy, or
//! `/auth/forward` behind Traefik) trades for a cookie of that host alone. The edge strips
//! that cookie before the request reaches the demo.
//!
//! Tickets and cookies are `<claims>.<HMAC-SHA256>` (base64url), signed with a key kept in
//! Postgres and shared by every replica; each names its purpose, host, person and expiry.

use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::Response;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::OffsetDateTime;

use super::cookies::{cookie, found, set_cookie};
use crate::config::Config;

/// The gate's cookie on a preview host.
pub const GATE_COOKIE: &str = "demofleet_gate";
/// Where, on a preview host, a ticket is traded for the cookie.
pub const GATE_PATH: &str = "/.demofleet/auth";
/// How long a ticket may take from the controller to the preview.
const TICKET_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    /// `ticket` or `cookie`.
    p: String,
    /// The preview host (with port) it is good for.
    h: String,
    /// Who.
    e: String,
    /// Unix time it expires.
    x: i64,
    /// Tickets: the path to go on to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
}

/// What the gate says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through; `email` is who it is.
    Pass { email: String },
    /// Send the visitor to `location`, setting the gate cookie if there is one.
    Redirect { location: String, set_cookie: Option<String> },
}

#[derive(Clone)]
pub struct Gate {
    key: Vec<u8>,
    /// `<public URL>/auth/login`.
    login_url: String,
    cookie_ttl: Duration,
    secure: bool,
}

impl Gate {
    pub fn new(config: &Config, key: Vec<u8>) -> Gate {
        Gate {
            key,
            login_url: format!("{}/auth/login", config.public_url()),
            cookie_ttl: config.session_ttl,
            secure: config.public_scheme == "https",
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The claims of `token` when it is signed by us, for `purpose` on `host`, unexpired.
    fn verify(&self, token: &str, purpose: &str, host: &str) -> Option<Claims> {
        let (body, signature) = token.split_once('.')?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(body.as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        let live = claims.x > OffsetDateTime::now_utc().unix_timestamp();
        (claims.p == purpose && claims.h.eq_ignore_ascii_case(host) && live).then_some(claims)
    }

    /// A ticket that lets `email` into `host`, then on to `next` (a path).
    pub fn ticket(&self, host: &str, email: &str, next: &str) -> String {
        let x = OffsetDateTime::now_utc().unix_timestamp() + TICKET_TTL.as_secs() as i64;
        self.sign(&Claims {
            p: "ticket".into(),
            h: host.to_ascii_lowercase(),
            e: email.into(),
            x,
            n: Some(next.into()),
        })
    }

    /// Where a ticket for `host` is traded, to go on to `next`.
    pub fn ticket_url(&self, scheme: &str, host: &str, email: &str, next: &str) -> String {
        let ticket = self.ticket(host, email, next);
        format!("{scheme}://{host}{GATE_PATH}?ticket={ticket}")
    }

    /// Decide on a request for `host` (as the browser sent it, port included) with
    /// `path_and_query`, seen as `scheme`, carrying `headers`.
    pub fn check(&self, scheme: &str, host: &str, path_and_query: &str, headers: &HeaderMap) -> Decision {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        if path == GATE_PATH {
            let ticket = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ticket").map(|(_, v)| v);
            if let Some(claims) = ticket.and_then(|t| self.verify(&t, "ticket", host)) {
                let x = OffsetDateTime::now_utc().unix_timestamp() + self.cookie_ttl.as_secs() as i64;
                let cookie = self.sign(&Claims { p: "cookie".into(), h: claims.h, e: claims.e, x, n: None });
                let next = claims.n.filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or("/".into());
                return Decision::Redirect {
                    location: next,
                    set_cookie: Some(set_cookie(GATE_COOKIE, &cookie, self.cookie_ttl, self.secure)),
                };
            }
        } else if let Some(claims) = cookie(headers, GATE_COOKIE).and_then(|c| self.verify(c, "cookie", host)) {
            return Decision::Pass { email: claims.e };
        }
        let back = if path == GATE_PATH { "/" } else { path_and_query };
        let next: String =
            url::form_urlencoded::byte_serialize(format!("{scheme}://{host}{back}").as_bytes()).collect();
        Decision::Redirect { location: format!("{}?next={next}", self.login_url), set_cookie: None }
    }
}

impl Decision {
    /// A redirect as an HTTP response; `None` for a pass.
    pub fn redirect(&self) -> Option<Response> {
        let Decision::Redirect { location, set_cookie } = self else { return None };
        let mut response = found(location);
        if let Some(cookie) = set_cookie.as_ref().and_then(|c| c.parse().ok()) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        Some(response)
    }
}

/// Remove the gate's cookie from a request before it goes to the demo.
pub fn strip_cookie(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && pair.split_once('=').is_none_or(|(k, _)| k != GATE_COOKIE))
        .map(String::from)
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = kept.join("; ").parse() {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn gate() -> Gate {
        let config = Config::try_parse_from([
            "demofleet-controller",
            "--webhook-secret",
            "s",
            "--public-url",
            "http://ctl.example.com:8000",
        ])
        .unwrap();
        Gate::new(&config, b"key".to_vec())
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("theirs=1; {GATE_COOKIE}={value}").parse().unwrap());
        headers
    }

    #[test]
    fn a_ticket_becomes_a_cookie_for_its_host_only() {
        let gate = gate();
        let host = "site-o-pr-1.localhost:8080";
        let anonymous = gate.check("http", host, "/page?x=1", &HeaderMap::new());
        let expected =
            "http://ctl.example.com:8000/auth/login?next=http%3A%2F%2Fsite-o-pr-1.localhost%3A8080%2Fpage%3Fx%3D1";
        assert_eq!(anonymous, Decision::Redirect { location: expected.into(), set_cookie: None });

        let ticket = gate.ticket(host, "alice@example.com", "/page?x=1");
        let traded = gate.check("http", host, &format!("{GATE_PATH}?ticket={ticket}"), &HeaderMap::new());
        let Decision::Redirect { location, set_cookie: Some(set) } = traded else { panic!("{traded:?}") };
        assert_eq!(location, "/page?x=1");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
        let value = set.split(';').next().unwrap().split_once('=').unwrap().1.to_string();
        let pass = gate.check("http", host, "/", &with_cookie(&value));
        assert_eq!(pass, Decision::Pass { email: "alice@example.com".into() });

        // Not on another host, not as a ticket, not tampered with, not with another key.
        assert!(matches!(
            gate.check("http", "other-o-pr-2.localhost:8080", "/", &with_cookie(&value)),
            Decision::Redirect { .. }
        ));
        let on_other = gate.check(
            "http",
            "other-o-pr-2.localhost:8080",
            &format!("{GATE_PATH}?ticket={ticket}"),
            &HeaderMap::new(),
        );
        assert!(matches!(on_other, Decision::Redirect { set_cookie: None, .. }), "{on_other:?}");
        let (body, signature) = value.split_once('.').unwrap();
        let forged = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD
                .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap().replace("alice", "mallo"))
        );
        assert!(matches!(gate.check("http", host, "/", &with_cookie(&forged)), Decision::Redirect { .. }));
        let other_key = Gate { key: b"other".to_vec(), ..gate.clone() };
        assert!(matches!(other_key.check("http", host, "/", &with_cookie(&value)), Decision::Redirect { .. }));
        assert!(gate.verify(&ticket, "cookie", host).is_none(), "a ticket is no cookie");
    }

    #[test]
    fn the_gate_cookie_never_reaches_the_demo() {
        let mut headers = with_cookie("secret");
        strip_cookie(&mut headers);
        assert_eq!(headers[header::COOKIE], "theirs=1");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, format!("{GATE_COOKIE}=secret").parse().unwrap());
        strip_cookie(&mut only);
        assert!(only.get(header::COOKIE).is_none());
    }
}
