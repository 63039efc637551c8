//! Container labels. The `run.demo*` keys are the original demoservice's, kept so its
//! tooling still finds demos; `id`, `host`, `sha` and `generation` are ours. Traefik labels
//! for v1 and v2/v3 let a single-host Traefik docker provider route without the controller.

use std::collections::HashMap;

use crate::wire::DemoSpec;

pub const DEMO: &str = "run.demo";
pub const URL: &str = "run.demo.url";
pub const URL_FULL: &str = "run.demo.url_full";
pub const GITHUB_USER: &str = "run.demo.github_user";
pub const GITHUB_REPO: &str = "run.demo.github_repo";
pub const GITHUB_PR: &str = "run.demo.github_pr";
pub const ID: &str = "run.demo.id";
pub const HOST: &str = "run.demo.host";
pub const SHA: &str = "run.demo.sha";
pub const GENERATION: &str = "run.demo.generation";
/// A compose demo's service, on each of its containers.
pub const SERVICE: &str = "run.demo.service";
/// `true` on a compose demo's data service container and volumes that outlive a generation.
pub const KEPT: &str = "run.demo.kept";
/// A digest of what a kept container was created from: another one is made when it changes.
pub const CONFIG: &str = "run.demo.config";

/// Every label a demo's container carries. `port` is the port inside the container.
pub fn demo_labels(spec: &DemoSpec, host_id: &str, port: u16) -> HashMap<String, String> {
    let name = &spec.name;
    let mut labels = owned_by(spec, host_id);
    for (key, value) in [
        (URL, spec.hostname.clone()),
        (URL_FULL, spec.url.clone()),
        (GITHUB_USER, spec.owner.clone()),
        (GITHUB_REPO, spec.repo.clone()),
        (GITHUB_PR, spec.pr.to_string()),
        (SHA, spec.sha.clone()),
    ] {
        labels.insert(key.to_string(), value);
    }
    let traefik = [
        ("traefik.enable".to_string(), "true".to_string()),
        ("traefik.frontend.rule".to_string(), format!("Host:{}", spec.hostname)),
        ("traefik.port".to_string(), port.to_string()),
        (format!("traefik.http.routers.{name}.rule"), format!("Host(`{}`)", spec.hostname)),
        (format!("traefik.http.routers.{name}.service"), name.clone()),
        (format!("traefik.http.services.{name}.loadbalancer.server.port"), port.to_string()),
    ];
    labels.extend(traefik);
    labels
}

/// A compose demo's labels on a service the demo's address does not route to: the same,
/// without the Traefik routes, which belong to the routed service only.
pub fn unrouted(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.retain(|key, _| !key.starts_with("traefik."));
    labels.insert("traefik.enable".to_string(), "false".to_string());
    labels
}

/// The labels that say whose a demo's container, volume or network is: the demo's, its
/// generation's, this host's.
pub fn owned_by(spec: &DemoSpec, host_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (DEMO.to_string(), "true".to_string()),
        (ID.to_string(), spec.id.to_string()),
        (GENERATION.to_string(), spec.generation.to_string()),
        (HOST.to_string(), host_id.to_string()),
    ])
}

/// Mark a compose demo's data service container or volume as outliving its generation.
pub fn mark_kept(labels: &mut HashMap<String, String>) {
    labels.insert(KEPT.to_string(), "true".to_string());
}

/// Whether `labels` mark what outlives its generation ([`mark_kept`]).
pub fn is_kept(labels: &HashMap<String, String>) -> bool {
    labels.get(KEPT).is_some_and(|k| k == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_routed_service_keeps_the_routes() {
        let labels = HashMap::from([
            ("traefik.enable".to_string(), "true".to_string()),
            ("traefik.http.routers.site-o-pr-1.rule".to_string(), "Host(`site-o-pr-1.example`)".to_string()),
            ("traefik.port".to_string(), "8080".to_string()),
            (ID.to_string(), "a-demo".to_string()),
        ]);
        let unrouted = unrouted(labels);
        assert_eq!(unrouted.len(), 2, "{unrouted:?}");
        assert_eq!((unrouted["traefik.enable"].as_str(), unrouted[ID].as_str()), ("false", "a-demo"));
    }
}
