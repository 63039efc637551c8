//! Traefik's dynamic configuration for the fleet: one router per routed demo (a `Host`
//! rule on its hostname, the configured entry points, TLS with the configured certificate
//! resolver) and one service pointing at the demo's host address and published port.
//! Demos that sleep when idle are served through the edge proxy instead, which notes their
//! requests and wakes them (`DEMOFLEET_EDGE_URL`).
//!
//! Served at `GET /traefik/dynamic` for Traefik's HTTP provider, and optionally written to a
//! file for its file provider (write to a temporary file, then rename; only on change).
//! The configuration names every demo's host address and published port, which would let
//! anyone who reads it skip the SSO gate: the endpoint answers only a client that gives
//! `DEMOFLEET_TRAEFIK_TOKEN` (as a bearer token, or `?token=` in the provider's endpoint,
//! since Traefik v2's provider sends no headers of its own), or, without a token
//! configured, a client on loopback.

use std::net::SocketAddr;
use std::path::Path;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::db::demos::{self, Route};
use crate::error::ApiError;
use crate::state::AppState;
use crate::urls::DemoUrls;
use demofleet_common::secret::Secret;

pub fn router() -> Router<AppState> {
    Router::new().route("/traefik/dynamic", get(dynamic))
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn dynamic(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<TokenQuery>,
) -> Result<Json<Value>, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    admit(app.config.traefik_token.as_ref(), peer, bearer.or(query.token.as_deref()))?;
    Ok(Json(current(&app.db, &app.config, &app.urls).await?))
}

/// Whether a client at `peer` that gave `given` may read the configuration.
fn admit(token: Option<&Secret>, peer: SocketAddr, given: Option<&str>) -> Result<(), ApiError> {
    match (token, given) {
        (Some(token), Some(given)) if token.matches(given) => Ok(()),
        (Some(_), Some(_)) => Err(ApiError::Forbidden("the Traefik token given is not DEMOFLEET_TRAEFIK_TOKEN".into())),
        (Some(_), None) => Err(ApiError::Unauthorized(
            "Traefik's configuration needs the token DEMOFLEET_TRAEFIK_TOKEN (Authorization: Bearer, or ?token=)"
                .into(),
        )),
        (None, _) if peer.ip().is_loopback() => Ok(()),
        (None, _) => Err(ApiError::Forbidden(
            "Traefik's configuration is answered only on loopback unless DEMOFLEET_TRAEFIK_TOKEN is set".into(),
        )),
    }
}

/// The configuration for the demos routed now.
pub async fn current(db: &sqlx::PgPool, config: &Config, urls: &DemoUrls) -> sqlx::Result<Value> {
    let routes = demos::routes(db, config.idle_sleep_seconds()).await?;
    Ok(build(config, urls, &routes))
}

/// Dynamic configuration (Traefik v2 and v3 read the same shape) for `routes`.
pub fn build(config: &Config, urls: &DemoUrls, routes: &[Route]) -> Value {
    let mut routers = Map::new();
    let mut services = Map::new();
    let mut middlewares = Map::new();
    for route in routes {
        let hostname = urls.hostname(&route.name);
        let mut router = json!({
            "rule": format!("Host(`{hostname}`)"),
            "entryPoints": config.traefik_entrypoints,
            "service": route.name,
        });
        if let Some(resolver) = &config.traefik_cert_resolver {
            router["tls"] = json!({ "certResolver": resolver });
        }
        if route.gated {
            router["middlewares"] = json!([SSO_MIDDLEWARE]);
            middlewares.insert(SSO_MIDDLEWARE.into(), sso_middleware(config));
        }
        routers.insert(route.name.clone(), router);
        let server = match route.host_port.filter(|_| route.routed && !route.sleeps) {
            Some(port) => format!("http://{}:{port}", route.address),
            None => config.edge_url(),
        };
        services.insert(
            route.name.clone(),
            json!({ "loadBalancer": { "servers": [{ "url": server }], "passHostHeader": true } }),
        );
    }
    let mut http = json!({ "routers": routers, "services": services });
    if !middlewares.is_empty() {
        http["middlewares"] = Value::Object(middlewares);
    }
    json!({ "http": http })
}

/// The forwardAuth middleware in front of gated demos.
const SSO_MIDDLEWARE: &str = "demofleet-sso";

/// Traefik asks the controller's `/auth/forward` about each request; 2xx passes (with
/// `X-Forwarded-User`), anything else (a redirect to sign in) goes back to the visitor.
fn sso_middleware(config: &Config) -> Value {
    let address = config.forward_auth_url();
    json!({ "forwardAuth": { "address": address, "trustForwardHeader": true, "authResponseHeaders": ["X-Forwarded-User"] } })
}

/// Write `config` to `path` if it differs from what is there: a temporary file beside it,
/// then a rename, so Traefik never reads half a file. Returns whether it wrote.
pub async fn write_if_changed(path: &Path, config: &Value) -> std::io::Result<bool> {
    let text = serde_json::to_vec_pretty(config).expect("JSON values serialize");
    if tokio::fs::read(path).await.ok().as_deref() == Some(text.as_slice()) {
        return Ok(false);
    }
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("dynamic.json");
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    tokio::fs::write(&temporary, &text).await?;
    tokio::fs::rename(&temporary, path).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn only_traefik_reads_the_configuration() {
        let token = Secret::new("provider-token");
        let remote: SocketAddr = "10.0.0.9:50000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        assert!(admit(Some(&token), remote, Some("provider-token")).is_ok());
        assert!(matches!(admit(Some(&token), remote, Some("guess")), Err(ApiError::Forbidden(_))));
        assert!(
            matches!(admit(Some(&token), local, None), Err(ApiError::Unauthorized(_))),
            "a token binds loopback too"
        );
        assert!(admit(None, local, None).is_ok());
        assert!(matches!(admit(None, remote, Some("anything")), Err(ApiError::Forbidden(_))));
    }

    fn schema(version: &str) -> jsonschema::Validator {
        let path = format!("{}/../tests/data/traefik/traefik-{version}-file-provider.json", env!("CARGO_MANIFEST_DIR"));
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    fn routes() -> Vec<Route> {
        vec![route("hello-world-codertocat-pr-2", "10.0.0.5", 32768), route("site-o-pr-9", "127.0.0.1", 40001)]
    }

    fn route(name: &str, address: &str, port: i32) -> Route {
        Route {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            address: address.into(),
            host_port: Some(port),
            routed: true,
            sleeps: false,
            gated: false,
        }
    }

    fn config(args: &[&str]) -> Config {
        let base = ["demofleet-controller", "--webhook-secret", "s", "--base-domain", "demos.example.com"];
        Config::try_parse_from(base.iter().chain(args)).unwrap()
    }

    #[test]
    fn valid_for_traefik_v2_and_v3_with_and_without_tls() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: None };
        for args in [&[][..], &["--traefik-cert-resolver", "le", "--traefik-entrypoints", "websecure,web"][..]] {
            let dynamic = build(&config(args), &urls, &routes());
            for version in ["v2", "v3"] {
                let errors: Vec<String> = schema(version).iter_errors(&dynamic).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "{version}: {errors:?}\n{dynamic:#}");
            }
        }
        let empty = build(&config(&[]), &urls, &[]);
        assert!(schema("v3").is_valid(&empty) && schema("v2").is_valid(&empty));
        // The schemas do refuse what Traefik would refuse.
        let wrong = json!({ "http": { "routers": { "x": { "rule": 5, "service": "x" } } } });
        assert!(!schema("v3").is_valid(&wrong) && !schema("v2").is_valid(&wrong));
        let unknown = json!({ "http": { "routers": { "x": { "rule": "Host(`x`)", "hosts": ["x"] } } } });
        assert!(!schema("v3").is_valid(&unknown));
    }

    #[test]
    fn one_router_and_service_per_demo() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: None };
        let dynamic = build(&config(&["--traefik-cert-resolver", "le"]), &urls, &routes());
        let router = &dynamic["http"]["routers"]["hello-world-codertocat-pr-2"];
        assert_eq!(router["rule"], "Host(`hello-world-codertocat-pr-2.demos.example.com`)");
        assert_eq!(router["entryPoints"], json!(["web"]));
        assert_eq!(router["tls"], json!({ "certResolver": "le" }));
        let service = &dynamic["http"]["services"]["hello-world-codertocat-pr-2"];
        assert_eq!(service["loadBalancer"]["servers"][0]["url"], "http://10.0.0.5:32768");
        assert_eq!(dynamic["http"]["routers"].as_object().unwrap().len(), 2);
    }

    #[test]
    fn gated_demos_pass_the_forward_auth_middleware() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: None };
        let gated = Route { gated: true, ..route("a-o-pr-1", "10.0.0.5", 32768) };
        let config =
            config(&["--forward-auth-url", "http://10.0.0.1:8000/auth/forward", "--traefik-cert-resolver", "le"]);
        let dynamic = build(&config, &urls, &[gated, route("b-o-pr-2", "10.0.0.5", 32769)]);
        assert_eq!(dynamic["http"]["routers"]["a-o-pr-1"]["middlewares"], json!(["demofleet-sso"]));
        assert!(dynamic["http"]["routers"]["b-o-pr-2"].get("middlewares").is_none(), "ungated: no middleware");
        let forward = &dynamic["http"]["middlewares"]["demofleet-sso"]["forwardAuth"];
        assert_eq!(forward["address"], "http://10.0.0.1:8000/auth/forward");
        assert_eq!(forward["trustForwardHeader"], true);
        for version in ["v2", "v3"] {
            let errors: Vec<String> = schema(version).iter_errors(&dynamic).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{version}: {errors:?}\n{dynamic:#}");
        }
    }

    #[test]
    fn demos_that_sleep_are_served_through_the_edge() {
        let urls = DemoUrls { base_domain: "demos.example.com".into(), scheme: "https".into(), port: None };
        let awake = Route { sleeps: true, ..route("a-o-pr-1", "10.0.0.5", 32768) };
        let asleep = Route { sleeps: true, routed: false, host_port: None, ..route("b-o-pr-2", "10.0.0.5", 1) };
        let config = config(&["--edge-url", "http://10.0.0.1:8080"]);
        let dynamic = build(&config, &urls, &[awake, asleep]);
        for name in ["a-o-pr-1", "b-o-pr-2"] {
            let server = &dynamic["http"]["services"][name]["loadBalancer"]["servers"][0]["url"];
            assert_eq!(server, "http://10.0.0.1:8080", "{name}");
            assert_eq!(dynamic["http"]["routers"][name]["rule"], format!("Host(`{name}.demos.example.com`)"));
        }
        assert!(schema("v3").is_valid(&dynamic) && schema("v2").is_valid(&dynamic));
    }

    #[tokio::test]
    async fn the_file_is_replaced_atomically_and_only_on_change() {
        let dir = std::env::temp_dir().join(format!("demofleet-traefik-{}", uuid::Uuid::new_v4()));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let path = dir.join("dynamic.json");
        let first = json!({ "http": { "routers": {}, "services": {} } });
        assert!(write_if_changed(&path, &first).await.unwrap());
        assert!(!write_if_changed(&path, &first).await.unwrap(), "unchanged: not written");
        let second = json!({ "http": { "routers": { "a": { "rule": "Host(`a`)", "service": "a" } }, "services": {} } });
        assert!(write_if_changed(&path, &second).await.unwrap());
        let written: Value = serde_json::from_slice(&tokio::fs::read(&path).await.unwrap()).unwrap();
        assert_eq!(written, second);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("dynamic.json")]);
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }
}
