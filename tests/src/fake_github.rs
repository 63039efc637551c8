//! A fake GitHub API that behaves as `docs/github-api.md` describes the real one: the
//! same paths and status codes, `User-Agent` required, bearer auth (a token, or an App JWT
//! for `/app/...` and the installation lookup, checked RS256 against the App's public
//! key), rate-limit headers on every answer, and injectable rate-limit and server faults.
//! Every call is recorded so tests can assert what GitHub was told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

/// One recorded API call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Value,
    /// `token`, `installation` or `jwt` (how it authenticated), or `none`.
    pub auth: &'static str,
    pub status: u16,
    pub at: std::time::Instant,
}

/// A fault to answer the next matching calls with.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 with `retry-after: N` seconds (a secondary rate limit).
    RetryAfter(u64),
    /// 403 with `x-ratelimit-remaining: 0` and a reset N seconds ahead (primary limit).
    Exhausted(u64),
    /// 500.
    ServerError,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// `(owner/repo, user)` → permission; anyone else gets `default_permission`.
    permissions: HashMap<(String, String), String>,
    default_permission: String,
    token: String,
    app: Option<(String, DecodingKey)>,
    installation_tokens: Vec<String>,
    /// Faults for calls whose path contains the key.
    faults: Vec<(String, Fault)>,
    next_id: i64,
    /// Comment id → (owner/repo#pr, body).
    comments: HashMap<i64, (String, String)>,
    /// `owner/repo#number` → the pull request as `GET /repos/{owner}/{repo}/pulls/{number}` returns it.
    pulls: HashMap<String, Value>,
    remaining: u64,
}

#[derive(Clone)]
pub struct FakeGitHub {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _server: Arc<AbortOnDrop>,
}

/// Stops the server when the last handle to it goes.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl FakeGitHub {
    /// Start on a free loopback port. `token` is the accepted plain token; `app` the App id
    /// and public key PEM, when App auth is to be accepted.
    pub async fn start(token: &str, app: Option<(&str, &[u8])>) -> FakeGitHub {
        let inner = Inner {
            default_permission: "write".into(),
            token: token.into(),
            app: app.map(|(id, pem)| (id.to_string(), DecodingKey::from_rsa_pem(pem).expect("public key PEM"))),
            next_id: 1000,
            remaining: 5000,
            ..Inner::default()
        };
        let inner = Arc::new(Mutex::new(inner));
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGitHub { url: format!("http://{addr}"), inner, _server: Arc::new(AbortOnDrop(task.abort_handle())) }
    }

    /// Serve `pull` (a pull request object, as in a `pull_request` webhook) at
    /// `GET /repos/{owner}/{repo}/pulls/{number}`, as GitHub's REST API does.
    pub fn add_pull(&self, pull: &Value) {
        let key = format!("{}#{}", pull["base"]["repo"]["full_name"].as_str().unwrap(), pull["number"]);
        self.inner.lock().unwrap().pulls.insert(key, pull.clone());
    }

    pub fn set_permission(&self, repo: &str, user: &str, permission: &str) {
        self.inner.lock().unwrap().permissions.insert((repo.into(), user.into()), permission.into());
    }

    /// Answer the next `count` calls whose path contains `path_part` with `fault`.
    pub fn fail_next(&self, path_part: &str, count: usize, fault: Fault) {
        let mut inner = self.inner.lock().unwrap();
        for _ in 0..count {
            inner.faults.push((path_part.into(), fault.clone()));
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Successful calls of `method` whose path contains `part`.
    pub fn successful(&self, method: Method, part: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method && c.path.contains(part) && c.status < 300).collect()
    }

    /// The bodies of the comments on `owner/repo#pr`, as they stand now.
    pub fn comments(&self, repo: &str, pr: u64) -> Vec<String> {
        let key = format!("{repo}#{pr}");
        let inner = self.inner.lock().unwrap();
        let mut found: Vec<(i64, String)> =
            inner.comments.iter().filter(|(_, (k, _))| *k == key).map(|(id, (_, body))| (*id, body.clone())).collect();
        found.sort();
        found.into_iter().map(|(_, body)| body).collect()
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (status, json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }))
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut inner = inner.lock().unwrap();
    let (auth, (status, answer), extra) = answer(&mut inner, &method, &path, &headers, &body);
    inner.remaining = inner.remaining.saturating_sub(1);
    let call = Call { method, path, body, auth, status: status.as_u16(), at: std::time::Instant::now() };
    inner.calls.push(call);
    let reset = now() + 3600;
    let mut response = (status, Json(answer)).into_response();
    let h = response.headers_mut();
    let remaining = if extra.iter().any(|(k, _)| *k == "x-ratelimit-remaining") { 0 } else { inner.remaining };
    for (name, value) in [
        ("x-ratelimit-limit", "5000".to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-used", (5000 - remaining).to_string()),
        ("x-ratelimit-reset", reset.to_string()),
        ("x-ratelimit-resource", "core".to_string()),
        ("x-github-api-version-selected", "2022-11-28".to_string()),
    ] {
        h.insert(name, value.parse().unwrap());
    }
    for (name, value) in extra {
        h.insert(name, value.parse().unwrap());
    }
    response
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

type Answer = (&'static str, (StatusCode, Value), Vec<(&'static str, String)>);

fn answer(inner: &mut Inner, method: &Method, path: &str, headers: &HeaderMap, body: &Value) -> Answer {
    if headers.get("user-agent").is_none() {
        let refusal = error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
        return ("none", refusal, vec![]);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let wants_jwt = segments.first() == Some(&"app") || (segments.len() == 4 && segments[3] == "installation");
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
        .unwrap_or_default()
        .to_string();
    let auth = match authenticate(inner, &bearer, wants_jwt) {
        Ok(kind) => kind,
        Err(message) => return ("none", error(StatusCode::UNAUTHORIZED, message), vec![]),
    };
    if let Some(i) = inner.faults.iter().position(|(part, _)| path.contains(part.as_str())) {
        let (_, fault) = inner.faults.remove(i);
        return match fault {
            Fault::RetryAfter(secs) => (
                auth,
                error(StatusCode::TOO_MANY_REQUESTS, "You have exceeded a secondary rate limit."),
                vec![("retry-after", secs.to_string())],
            ),
            Fault::Exhausted(secs) => (
                auth,
                error(StatusCode::FORBIDDEN, "API rate limit exceeded for installation."),
                vec![("x-ratelimit-remaining", "0".into()), ("x-ratelimit-reset", (now() + secs).to_string())],
            ),
            Fault::ServerError => (auth, error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error"), vec![]),
        };
    }
    let mut id = || {
        inner.next_id += 1;
        inner.next_id
    };
    let created = |value: Value| (StatusCode::CREATED, value);
    let result = match (method.as_str(), segments.as_slice()) {
        ("GET", ["repos", owner, repo, "installation"]) => (
            StatusCode::OK,
            json!({ "id": 4242, "account": { "login": owner }, "app_slug": "demofleet", "repo": repo }),
        ),
        ("POST", ["app", "installations", _, "access_tokens"]) => {
            let token = format!("ghs_{}", uuid::Uuid::new_v4().simple());
            inner.installation_tokens.push(token.clone());
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let expires = expires.format(&time::format_description::well_known::Rfc3339).unwrap();
            created(json!({ "token": token, "expires_at": expires, "permissions": {}, "repository_selection": "all" }))
        }
        ("GET", ["repos", owner, repo, "pulls", number]) => {
            match inner.pulls.get(&format!("{owner}/{repo}#{number}")) {
                Some(pull) => (StatusCode::OK, pull.clone()),
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        ("GET", ["repos", owner, repo, "collaborators", user, "permission"]) => {
            let key = (format!("{owner}/{repo}"), user.to_string());
            let permission = inner.permissions.get(&key).cloned().unwrap_or_else(|| inner.default_permission.clone());
            let role = if permission == "admin" { "admin" } else { permission.as_str() };
            (StatusCode::OK, json!({ "permission": permission, "role_name": role, "user": { "login": user } }))
        }
        ("POST", ["repos", owner, repo, "issues", number, "comments"]) => match body["body"].as_str() {
            Some(text) => {
                let id = id();
                inner.comments.insert(id, (format!("{owner}/{repo}#{number}"), text.to_string()));
                created(json!({ "id": id, "body": text }))
            }
            None => error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request. \"body\" wasn't supplied."),
        },
        ("PATCH", ["repos", _, _, "issues", "comments", comment]) => {
            let id: i64 = comment.parse().unwrap_or(-1);
            match (inner.comments.get_mut(&id), body["body"].as_str()) {
                (Some(entry), Some(text)) => {
                    entry.1 = text.to_string();
                    (StatusCode::OK, json!({ "id": id, "body": text }))
                }
                (None, _) => error(StatusCode::NOT_FOUND, "Not Found"),
                (_, None) => error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request. \"body\" wasn't supplied."),
            }
        }
        ("POST", ["repos", _, _, "deployments"]) => {
            if body["ref"].as_str().is_none() {
                error(StatusCode::UNPROCESSABLE_ENTITY, "Invalid request. \"ref\" wasn't supplied.")
            } else {
                created(json!({ "id": id(), "ref": body["ref"], "environment": body["environment"] }))
            }
        }
        ("POST", ["repos", _, _, "deployments", _, "statuses"]) => {
            let valid = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
            match body["state"].as_str() {
                Some(state) if valid.contains(&state) => created(json!({ "id": id(), "state": state })),
                _ => error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed"),
            }
        }
        ("POST", ["repos", _, _, "statuses", _]) => match body["state"].as_str() {
            Some("pending" | "success" | "failure" | "error") => created(json!({ "id": id(), "state": body["state"] })),
            _ => error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed"),
        },
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    };
    (auth, result, vec![])
}

fn authenticate(inner: &Inner, bearer: &str, wants_jwt: bool) -> Result<&'static str, &'static str> {
    if bearer.is_empty() {
        return Err("Requires authentication");
    }
    if wants_jwt {
        let Some((app_id, key)) = &inner.app else { return Err("A JSON web token could not be decoded") };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss"]);
        let claims = jsonwebtoken::decode::<Claims>(bearer, key, &validation)
            .map_err(|_| "A JSON web token could not be decoded")?
            .claims;
        if claims.iss != *app_id {
            return Err("'Issuer' claim ('iss') must be an Integer");
        }
        if claims.iat > now() as i64 + 60 {
            return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past");
        }
        return Ok("jwt");
    }
    if bearer == inner.token {
        Ok("token")
    } else if inner.installation_tokens.iter().any(|t| t == bearer) {
        Ok("installation")
    } else {
        Err("Bad credentials")
    }
}

/// A GitHub-style App key pair made with `openssl`: the private key as GitHub hands it out
/// (PKCS#1 PEM) and its public key.
pub fn app_key_pair(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let private = dir.join("app-key.pem");
    let run = |args: &[&str]| {
        let out = crate::command::output(std::process::Command::new("openssl").args(args), crate::command::QUICK)
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    run(&["genrsa", "-traditional", "-out", private.to_str().unwrap(), "2048"]);
    let public = run(&["rsa", "-in", private.to_str().unwrap(), "-pubout"]);
    (private, public)
}
