//! The SSO gate on preview URLs of gated repositories. Demos are other people's code, so no
//! cookie of the controller's domain ever reaches them: after sign-in the visitor is sent to
//! the preview's own host with a short-lived signed ticket, which the gate (edge proxy, or
//! `/auth/forward` behind Traefik) trades for a cookie of that host alone. The edge strips
//! that cookie before the request reaches the demo.
//!
//! Tickets and cookies are `<claims>.<HMAC-SHA256>` (base64url), signed with a key kept in
//! Postgres and shared by every replica; each names its purpose, host, person, expiry and the
//! session it was made in. A ticket is good once (traded tickets are kept in Postgres until
//! they expire), and a ticket or cookie is good only while its session lives: signing out
//! ends the gate cookies made in that session, on every preview.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::cookies::{cookie, found, same_site_path, set_cookie};
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
    /// The session it was made in: its token's hash (base64url), never the token.
    s: String,
    /// Tickets: the path to go on to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    /// Tickets: a random id, so that each is traded once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    j: Option<String>,
}

/// What the gate says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through; `email` is who it is.
    Pass { email: String },
    /// Send the visitor to `location`, setting (or clearing) the gate cookie if there is one.
    Redirect { location: String, set_cookie: Option<String> },
    /// Refuse the request with `status`, saying why.
    Refuse { status: StatusCode, message: String },
}

/// What a request brings, before the database has a say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Brought {
    /// A ticket, well signed, for this host, unexpired.
    Ticket(Claims),
    /// A cookie, well signed, for this host, unexpired.
    Cookie(Claims),
    /// Neither.
    Nothing,
}

#[derive(Clone)]
pub struct Gate {
    key: Vec<u8>,
    db: PgPool,
    /// `<public URL>/auth/login`.
    login_url: String,
    cookie_ttl: Duration,
    secure: bool,
}

impl Gate {
    pub fn new(config: &Config, key: Vec<u8>, db: PgPool) -> Gate {
        Gate {
            key,
            db,
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

    /// A ticket that lets `email`, signed in with the session whose token hashes to
    /// `session`, into `host`, then on to `next` (a path).
    pub fn ticket(&self, host: &str, email: &str, session: &[u8], next: &str) -> String {
        let x = OffsetDateTime::now_utc().unix_timestamp() + TICKET_TTL.as_secs() as i64;
        self.sign(&Claims {
            p: "ticket".into(),
            h: host.to_ascii_lowercase(),
            e: email.into(),
            x,
            s: URL_SAFE_NO_PAD.encode(session),
            n: Some(next.into()),
            j: Some(super::tokens::random_token()),
        })
    }

    /// Where a ticket for `host` is traded, to go on to `next`.
    pub fn ticket_url(&self, scheme: &str, host: &str, email: &str, session: &[u8], next: &str) -> String {
        let ticket = self.ticket(host, email, session, next);
        format!("{scheme}://{host}{GATE_PATH}?ticket={ticket}")
    }

    /// What a request for `host` with `path_and_query` and `headers` brings.
    fn brought(&self, host: &str, path_and_query: &str, headers: &HeaderMap) -> Brought {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        if path == GATE_PATH {
            let ticket = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "ticket").map(|(_, v)| v);
            return ticket.and_then(|t| self.verify(&t, "ticket", host)).map_or(Brought::Nothing, Brought::Ticket);
        }
        cookie(headers, GATE_COOKIE)
            .and_then(|c| self.verify(c, "cookie", host))
            .map_or(Brought::Nothing, Brought::Cookie)
    }

    /// Decide on a request for `host` (as the browser sent it, port included) with
    /// `path_and_query`, seen as `scheme`, carrying `headers`.
    pub async fn check(&self, scheme: &str, host: &str, path_and_query: &str, headers: &HeaderMap) -> Decision {
        match self.decide(scheme, host, path_and_query, headers).await {
            Ok(decision) => decision,
            Err(err) => {
                tracing::error!(error = %err, %host, "the SSO gate cannot reach the database");
                Decision::Refuse {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the sign-in gate cannot check this request now; try again shortly".into(),
                }
            }
        }
    }

    async fn decide(
        &self,
        scheme: &str,
        host: &str,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> sqlx::Result<Decision> {
        match self.brought(host, path_and_query, headers) {
            Brought::Ticket(claims) => {
                if !self.session_lives(&claims.s).await? {
                    return Ok(self.to_login(scheme, host, "/", false));
                }
                let id = claims.j.clone().unwrap_or_default();
                let first = sqlx::query(
                    "with expired as (delete from gate_tickets where expires_at < now())
                     insert into gate_tickets (id, expires_at) values ($1, to_timestamp($2)) on conflict (id) do nothing",
                )
                .bind(&id)
                .bind(claims.x as f64)
                .execute(&self.db)
                .await?
                .rows_affected()
                    == 1;
                if id.is_empty() || !first {
                    tracing::warn!(%host, email = %claims.e, "a gate ticket was brought again");
                    return Ok(Decision::Refuse {
                        status: StatusCode::FORBIDDEN,
                        message: "this sign-in ticket has been used already (each is good once): \
                                  open the preview's address again to sign in"
                            .into(),
                    });
                }
                let x = OffsetDateTime::now_utc().unix_timestamp() + self.cookie_ttl.as_secs() as i64;
                let cookie = self.sign(&Claims {
                    p: "cookie".into(),
                    h: claims.h,
                    e: claims.e,
                    x,
                    s: claims.s,
                    n: None,
                    j: None,
                });
                let next = claims.n.filter(|n| same_site_path(n)).unwrap_or("/".into());
                Ok(Decision::Redirect {
                    location: next,
                    set_cookie: Some(set_cookie(GATE_COOKIE, &cookie, self.cookie_ttl, self.secure)),
                })
            }
            Brought::Cookie(claims) => match self.session_lives(&claims.s).await? {
                true => Ok(Decision::Pass { email: claims.e }),
                // Signed out (or the session ended): the cookie goes, and the visitor signs in again.
                false => Ok(self.to_login(scheme, host, path_and_query, true)),
            },
            Brought::Nothing => {
                let (path, _) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
                let back = if path == GATE_PATH { "/" } else { path_and_query };
                Ok(self.to_login(scheme, host, back, false))
            }
        }
    }

    /// To sign in, then back to `back` on `host`; `clear` removes the gate cookie.
    fn to_login(&self, scheme: &str, host: &str, back: &str, clear: bool) -> Decision {
        let next: String =
            url::form_urlencoded::byte_serialize(format!("{scheme}://{host}{back}").as_bytes()).collect();
        let set_cookie = clear.then(|| set_cookie(GATE_COOKIE, "", Duration::ZERO, self.secure));
        Decision::Redirect { location: format!("{}?next={next}", self.login_url), set_cookie }
    }

    /// Whether the session whose token hashes to `session` (base64url) is live.
    async fn session_lives(&self, session: &str) -> sqlx::Result<bool> {
        let Ok(hash) = URL_SAFE_NO_PAD.decode(session) else { return Ok(false) };
        sqlx::query_scalar("select exists (select 1 from sessions where token_hash = $1 and expires_at > now())")
            .bind(hash)
            .fetch_one(&self.db)
            .await
    }
}

impl Decision {
    /// A redirect or refusal as an HTTP response; `None` for a pass.
    pub fn response(&self) -> Option<Response> {
        match self {
            Decision::Pass { .. } => None,
            Decision::Redirect { location, set_cookie } => {
                let mut response = found(location);
                if let Some(cookie) = set_cookie.as_ref().and_then(|c| c.parse().ok()) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                Some(response)
            }
            Decision::Refuse { status, message } => {
                Some((*status, [(header::CACHE_CONTROL, "no-store")], format!("{message}\n")).into_response())
            }
        }
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
        let db = PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
        Gate::new(&config, b"key".to_vec(), db)
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("theirs=1; {GATE_COOKIE}={value}").parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn tickets_and_cookies_are_good_for_their_host_and_purpose_only() {
        let gate = gate();
        let host = "site-o-pr-1.localhost:8080";
        let anonymous = gate.to_login("http", host, "/page?x=1", false);
        let expected =
            "http://ctl.example.com:8000/auth/login?next=http%3A%2F%2Fsite-o-pr-1.localhost%3A8080%2Fpage%3Fx%3D1";
        assert_eq!(anonymous, Decision::Redirect { location: expected.into(), set_cookie: None });
        assert_eq!(gate.brought(host, "/page?x=1", &HeaderMap::new()), Brought::Nothing);

        let ticket = gate.ticket(host, "alice@example.com", b"session", "/page?x=1");
        let Brought::Ticket(claims) = gate.brought(host, &format!("{GATE_PATH}?ticket={ticket}"), &HeaderMap::new())
        else {
            panic!("the ticket was not read")
        };
        assert_eq!((claims.e.as_str(), claims.n.as_deref()), ("alice@example.com", Some("/page?x=1")));
        assert_eq!(URL_SAFE_NO_PAD.decode(&claims.s).unwrap(), b"session");
        let other = gate.ticket(host, "alice@example.com", b"session", "/page?x=1");
        assert_ne!(gate.verify(&other, "ticket", host).unwrap().j, claims.j, "each ticket has its own id");

        let x = OffsetDateTime::now_utc().unix_timestamp() + 60;
        let value = gate.sign(&Claims { p: "cookie".into(), x, n: None, j: None, ..claims });
        assert!(
            matches!(gate.brought(host, "/", &with_cookie(&value)), Brought::Cookie(c) if c.e == "alice@example.com")
        );

        // Not on another host, not as a ticket, not tampered with, not with another key.
        assert_eq!(gate.brought("other-o-pr-2.localhost:8080", "/", &with_cookie(&value)), Brought::Nothing);
        let on_other =
            gate.brought("other-o-pr-2.localhost:8080", &format!("{GATE_PATH}?ticket={ticket}"), &HeaderMap::new());
        assert_eq!(on_other, Brought::Nothing);
        let (body, signature) = value.split_once('.').unwrap();
        let forged = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD
                .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap().replace("alice", "mallo"))
        );
        assert_eq!(gate.brought(host, "/", &with_cookie(&forged)), Brought::Nothing);
        let other_key = Gate { key: b"other".to_vec(), ..gate.clone() };
        assert_eq!(other_key.brought(host, "/", &with_cookie(&value)), Brought::Nothing);
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
