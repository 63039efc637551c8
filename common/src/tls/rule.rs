//! The one rule for broker URLs: TLS to any address, plain text to loopback only unless the
//! operator says the network is trusted.

use std::net::IpAddr;

use super::{Broker, TlsError, Transport};

/// The rule for one broker URL: TLS to any address; plain text to a loopback address
/// (`127.0.0.0/8`, `::1`, `localhost`) only, unless `allow_plaintext` says the network between
/// the hosts is trusted. A NATS URL without a scheme is plain `nats://`, as NATS reads it.
pub fn transport(broker: Broker, url: &str, allow_plaintext: bool) -> Result<Transport, TlsError> {
    let setting = broker.setting();
    let (plain, tls) = broker.schemes();
    let (scheme, host) = scheme_and_host(broker, url)?;
    let transport = match scheme.as_str() {
        s if s == tls => Transport::Tls,
        s if s == plain => Transport::Plain,
        _ => return Err(TlsError::Scheme { setting, scheme, plain, tls }),
    };
    if transport == Transport::Plain && !allow_plaintext && !is_loopback(&host) {
        return Err(TlsError::Plaintext { setting, host, tls });
    }
    Ok(transport)
}

/// The rule for a list of URLs (a cluster's nodes): each URL passes [`transport`], and all
/// are reached the same way.
pub fn list_transport(broker: Broker, urls: &[&str], allow_plaintext: bool) -> Result<Transport, TlsError> {
    let mut transports = urls.iter().map(|url| transport(broker, url, allow_plaintext));
    let first = transports.next().unwrap_or(Ok(Transport::Plain))?;
    for other in transports {
        if other? != first {
            let (plain, tls) = broker.schemes();
            return Err(TlsError::Mixed { setting: broker.setting(), plain, tls });
        }
    }
    Ok(first)
}

fn scheme_and_host(broker: Broker, url: &str) -> Result<(String, String), TlsError> {
    let setting = broker.setting();
    let with_scheme = match (broker, url.contains("://")) {
        (Broker::Nats, false) => format!("nats://{url}"),
        _ => url.to_string(),
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|e| TlsError::Url { setting, reason: e.to_string() })?;
    let host = match parsed.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) => host.to_string(),
        None => return Err(TlsError::NoHost { setting }),
    };
    if host.is_empty() {
        return Err(TlsError::NoHost { setting });
    }
    Ok((parsed.scheme().to_ascii_lowercase(), host))
}

/// Whether `host` (a name or an address, as a URL gives it) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amqp(url: &str, allow: bool) -> Result<Transport, TlsError> {
        transport(Broker::Amqp, url, allow)
    }

    fn nats(url: &str, allow: bool) -> Result<Transport, TlsError> {
        transport(Broker::Nats, url, allow)
    }

    #[test]
    fn tls_goes_anywhere() {
        assert_eq!(amqp("amqps://u:p@broker.internal/demofleet", false).unwrap(), Transport::Tls);
        assert_eq!(amqp("AMQPS://u:p@10.0.0.5:5671/demofleet", false).unwrap(), Transport::Tls);
        assert_eq!(nats("tls://broker.internal:4222", false).unwrap(), Transport::Tls);
        assert_eq!(nats("tls://127.0.0.1:4222", false).unwrap(), Transport::Tls);
    }

    #[test]
    fn plain_text_stays_on_loopback() {
        for url in
            ["amqp://u:p@127.0.0.1:5672/v", "amqp://u:p@127.1.2.3/v", "amqp://u:p@[::1]:5672/v", "amqp://localhost/v"]
        {
            assert_eq!(amqp(url, false).unwrap(), Transport::Plain, "{url}");
        }
        for url in ["nats://127.0.0.1:4222", "nats://LOCALHOST:4222", "127.0.0.1:4222", "nats://u:p@[::1]:4222"] {
            assert_eq!(nats(url, false).unwrap(), Transport::Plain, "{url}");
        }
    }

    #[test]
    fn plain_text_to_another_host_is_refused_and_says_how_to_enable_tls() {
        for url in [
            "amqp://u:secret@10.231.0.1:5672/v",
            "amqp://u:secret@broker.internal/v",
            "amqp://u:secret@[fd00::1]/v",
            "amqp://u:secret@0.0.0.0/v",
            "amqp://u:secret@localhost.example.com/v",
        ] {
            let err = amqp(url, false).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, TlsError::Plaintext { .. }), "{url}: {message}");
            assert!(message.contains("amqps://") && message.contains("DEMOFLEET_ALLOW_PLAINTEXT"), "{message}");
            assert!(!message.contains("secret"), "no password in {message}");
        }
        let err = nats("nats://broker.internal:4222", false).unwrap_err();
        assert!(err.to_string().contains("DEMOFLEET_NATS_URL") && err.to_string().contains("tls://"), "{err}");
        assert!(matches!(nats("10.231.0.1:4222", false), Err(TlsError::Plaintext { .. })));
    }

    #[test]
    fn a_trusted_network_takes_plain_text_anywhere() {
        assert_eq!(amqp("amqp://u:p@10.231.0.1:5672/v", true).unwrap(), Transport::Plain);
        assert_eq!(nats("nats://broker.internal:4222", true).unwrap(), Transport::Plain);
        assert_eq!(amqp("amqps://u:p@10.231.0.1/v", true).unwrap(), Transport::Tls);
    }

    #[test]
    fn other_schemes_and_hostless_urls_are_refused() {
        assert!(matches!(amqp("http://broker/v", true), Err(TlsError::Scheme { .. })));
        assert!(matches!(amqp("tls://broker/v", true), Err(TlsError::Scheme { .. })));
        assert!(matches!(nats("amqps://broker", true), Err(TlsError::Scheme { .. })));
        assert!(matches!(nats("ws://127.0.0.1:8080", true), Err(TlsError::Scheme { .. })));
        assert!(matches!(amqp("amqp:///v", true), Err(TlsError::NoHost { .. })));
        assert!(matches!(amqp("not a url", true), Err(TlsError::Url { .. })));
    }

    #[test]
    fn a_list_is_reached_one_way() {
        let tls = ["amqps://u:p@a/v", "amqps://u:p@b/v"];
        assert_eq!(list_transport(Broker::Amqp, &tls, false).unwrap(), Transport::Tls);
        let mixed = ["amqps://u:p@a/v", "amqp://u:p@127.0.0.1/v"];
        assert!(matches!(list_transport(Broker::Amqp, &mixed, false), Err(TlsError::Mixed { .. })));
        let one_plain = ["tls://a:4222", "nats://b:4222"];
        assert!(matches!(list_transport(Broker::Nats, &one_plain, false), Err(TlsError::Plaintext { .. })));
    }
}
