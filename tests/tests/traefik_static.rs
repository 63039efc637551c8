//! The example Traefik static configuration in `dist/traefik/` reads as TOML and fits the
//! controller: its HTTP provider polls `/traefik/dynamic` on the controller's default
//! listening port with a token, and it declares the entry point and certificate resolver the dynamic
//! configuration names.

use clap::Parser;
use demofleet_controller::config::Config;

#[test]
fn the_example_static_configuration_polls_the_controller() {
    let path = demofleet_tests::workspace_root().join("dist/traefik/traefik.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let config: toml::Table = toml::from_str(&text).expect("valid TOML");
    let http = &config["providers"]["http"];
    let endpoint = http["endpoint"].as_str().unwrap();
    let defaults = Config::try_parse_from(["demofleet-controller", "--webhook-secret", "x"]).expect("defaults parse");
    // The dynamic configuration is answered only with the fleet's Traefik token.
    let (url, token) = endpoint.split_once("?token=").expect("the endpoint carries ?token=");
    assert_eq!(url, format!("http://controller.internal:{}/traefik/dynamic", defaults.listen.port()));
    assert!(!token.is_empty() && !token.contains('&'), "{endpoint}");
    assert!(http["pollInterval"].as_str().is_some_and(|i| i.ends_with('s')), "a poll interval");
    let entry_points = config["entryPoints"].as_table().unwrap();
    for name in &defaults.traefik_entrypoints {
        assert!(entry_points.contains_key(name), "the default entry point {name} is declared");
    }
    assert!(entry_points.contains_key("websecure"));
    let acme = &config["certificatesResolvers"]["letsencrypt"]["acme"];
    assert_eq!(acme["httpChallenge"]["entryPoint"].as_str(), Some("web"));
}
