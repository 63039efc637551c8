//! Encryption between hosts: the TLS settings both binaries share, the rule that allows
//! plain text to a loopback address only, and the rustls client configuration that
//! RabbitMQ (`amqps://`) and NATS (`tls://`) connections use.
//!
//! Certificate checking is never off: a broker's certificate must chain to a CA of
//! `DEMOFLEET_TLS_CA_FILE` (else to one of the system's roots) and name the address the URL
//! gives. The files are read at every (re)connect, so certificates rotated in place are taken
//! up by the next connection.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS settings: what to trust, what to show, and whether plain text may leave the host.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsSettings {
    /// PEM file of the CA certificates a broker's certificate must chain to (several during a
    /// CA rotation); only these are trusted. Unset: the system's trusted roots.
    #[arg(long, env = "DEMOFLEET_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM file of this process's certificate (and its chain), shown to brokers that ask for
    /// one (mutual TLS); with `DEMOFLEET_TLS_KEY_FILE`.
    #[arg(long, env = "DEMOFLEET_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM file of the private key of `DEMOFLEET_TLS_CERT_FILE`.
    #[arg(long, env = "DEMOFLEET_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Allow plain `amqp://` and `nats://` to addresses other than loopback: only for a
    /// network the operator trusts (a private link, one machine's container network).
    #[arg(long, env = "DEMOFLEET_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
}

/// Which broker a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Amqp,
    Nats,
}

impl Broker {
    /// The setting that holds its URLs, for messages.
    pub fn setting(self) -> &'static str {
        match self {
            Broker::Amqp => "DEMOFLEET_AMQP_URL",
            Broker::Nats => "DEMOFLEET_NATS_URL",
        }
    }

    /// Its plain-text scheme and its TLS scheme.
    fn schemes(self) -> (&'static str, &'static str) {
        match self {
            Broker::Amqp => ("amqp", "amqps"),
            Broker::Nats => ("nats", "tls"),
        }
    }
}

/// How a broker URL is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS, the broker's certificate checked.
    Tls,
    /// Plain text: to a loopback address, or over a network declared trusted.
    Plain,
}

/// Why broker settings are refused. Messages name hosts, never a URL (it holds a password).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{setting} sends plain text to {host}, which is not a loopback address: use {tls}:// \
         (TLS; DEMOFLEET_TLS_CA_FILE names the CA that signed the broker's certificate), or set \
         DEMOFLEET_ALLOW_PLAINTEXT=true if the network between the hosts is trusted"
    )]
    Plaintext { setting: &'static str, host: String, tls: &'static str },
    #[error("{setting}: the scheme {scheme}:// is neither {plain}:// nor {tls}://")]
    Scheme { setting: &'static str, scheme: String, plain: &'static str, tls: &'static str },
    #[error("{setting}: a URL without a host")]
    NoHost { setting: &'static str },
    #[error("{setting}: not a URL ({reason})")]
    Url { setting: &'static str, reason: String },
    #[error("{setting} mixes {plain}:// and {tls}:// URLs: give every node the same one")]
    Mixed { setting: &'static str, plain: &'static str, tls: &'static str },
    #[error("{setting}: the URLs carry different credentials; every server takes the same ones")]
    Credentials { setting: &'static str },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("no trusted root certificates on this system: set DEMOFLEET_TLS_CA_FILE")]
    NoRoots,
    #[error("the TLS client settings: {0}")]
    Rustls(#[from] rustls::Error),
}

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

impl TlsSettings {
    /// The rustls client configuration of every broker connection, read from the files now:
    /// the CA file's certificates (else the system's roots) as the only trust anchors, and
    /// the client certificate when one is set.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.tls_ca_file {
            Some(path) => {
                for cert in read_certificates(path)? {
                    roots.add(cert).map_err(|e| TlsError::Pem { path: path.clone(), reason: e.to_string() })?;
                }
            }
            None => {
                let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                if added == 0 {
                    return Err(TlsError::NoRoots);
                }
            }
        }
        // lapin's own choice of provider, named so that the other one compiled in (ring, for
        // reqwest) cannot make the choice ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(read_certificates(cert)?, read_key(key)?)?,
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no PEM certificate in it".into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: format!("no private key read: {e}") })
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
    fn unreadable_or_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("demofleet-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = TlsSettings { tls_ca_file: Some(dir.join("missing.pem")), ..Default::default() };
        let err = missing.client_config().unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }) && err.to_string().contains("missing.pem"), "{err}");
        std::fs::write(dir.join("empty.pem"), "not a certificate\n").unwrap();
        let empty = TlsSettings { tls_ca_file: Some(dir.join("empty.pem")), ..Default::default() };
        let err = empty.client_config().unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
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
