//! The broker's certificate is checked, and the client's shown, from the files as they are
//! at each handshake: a CA bundle or a certificate replaced in place is used from the next
//! connection on (a reconnect, a new node), without restarting the process. Handshakes are
//! rare (one per connection), so the files are simply read again each time.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{read_certificates, read_key, roots, TlsError};

/// What a broker's certificate must chain to.
#[derive(Debug)]
pub(super) enum Trust {
    /// The CA file's certificates, read at each handshake.
    File(PathBuf),
    /// The system's roots, read at start.
    System(Arc<rustls::RootCertStore>),
}

/// Checks a broker's certificate as rustls's own (WebPKI) verifier does: chained to a trust
/// anchor, valid now, for the name or address the URL gives; the anchors as they are now.
#[derive(Debug)]
pub(super) struct BrokerVerifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl BrokerVerifier {
    pub(super) fn new(trust: Trust, provider: Arc<CryptoProvider>) -> BrokerVerifier {
        BrokerVerifier { trust, provider }
    }

    /// rustls's verifier over the current anchors.
    fn current(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let roots = match &self.trust {
            Trust::File(path) => Arc::new(roots(path).map_err(|e| rustls::Error::General(e.to_string()))?),
            Trust::System(roots) => roots.clone(),
        };
        WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for BrokerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.current()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// This process's certificate and key, read at each handshake that asks for them.
#[derive(Debug)]
pub(super) struct ClientIdentity {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl ClientIdentity {
    pub(super) fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> ClientIdentity {
        ClientIdentity { cert, key, provider }
    }

    /// The certificate chain and its key, which must match.
    pub(super) fn load(&self) -> Result<CertifiedKey, TlsError> {
        let chain = read_certificates(&self.cert)?;
        let key = read_key(&self.key)?;
        Ok(CertifiedKey::from_der(chain, key, &self.provider)?)
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        match self.load() {
            Ok(key) => Some(Arc::new(key)),
            Err(err) => {
                // The broker then refuses the connection, and says so; the reason is here.
                tracing::error!(error = %err, "the client certificate (DEMOFLEET_TLS_CERT_FILE) cannot be read");
                None
            }
        }
    }

    fn has_certs(&self) -> bool {
        true
    }
}
