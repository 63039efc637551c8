//! Encryption between hosts: the TLS settings both binaries share, the rule that allows
//! plain text to a loopback address only, and the rustls client configuration that
//! RabbitMQ (`amqps://`) and NATS (`tls://`) connections use.
//!
//! Certificate checking is never off: a broker's certificate must chain to a CA of
//! `DEMOFLEET_TLS_CA_FILE` (else to one of the system's roots) and name the address the URL
//! gives. The files are read at every handshake, so certificates rotated in place are taken
//! up by the next connection, the process left running.
//!
//! # Layout
//! - [`rule`]: which URLs may be used, and how.
//! - [`files`]: the broker's certificate checked, and the client's shown, from the files as
//!   they are at each handshake.

mod files;
mod rule;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use files::{BrokerVerifier, ClientIdentity, Trust};
pub use rule::{list_transport, transport};

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

impl TlsSettings {
    /// The rustls client configuration of every broker connection: the CA file's
    /// certificates as the only trust anchors (else the system's roots), and the client
    /// certificate when one is set. The files are read now, so that wrong ones stop the
    /// start, and again at every handshake ([`files`]).
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        // lapin's own choice of provider, named so that the other one compiled in (ring, for
        // reqwest) cannot make the choice ambiguous.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let trust = match &self.tls_ca_file {
            Some(path) => {
                roots(path)?;
                Trust::File(path.clone())
            }
            None => Trust::System(Arc::new(system_roots()?)),
        };
        let verifier = Arc::new(BrokerVerifier::new(trust, provider.clone()));
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                let identity = ClientIdentity::new(cert.clone(), key.clone(), provider);
                identity.load()?;
                builder.with_client_cert_resolver(Arc::new(identity))
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The trust anchors of a CA file: every certificate in it, at least one.
fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// The system's trusted roots.
fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
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
}
