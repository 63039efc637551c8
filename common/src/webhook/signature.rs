//! `X-Hub-Signature-256` checking: HMAC-SHA256 of the raw body with the shared secret,
//! compared in constant time. There is no way to skip it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a delivery's signature is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("X-Hub-Signature-256 must be 'sha256=' followed by 64 hex digits")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the body")]
    Mismatch,
}

/// Check `header` (the value of `X-Hub-Signature-256`, if any) against `body`.
pub fn verify(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    check(secret, body, &parse(header)?)
}

/// The digest a well-formed header claims, read before the body it signs is: a request
/// without one can be refused before a byte of its body is read.
pub fn parse(header: Option<&[u8]>) -> Result<Claimed, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
    let claimed = hex::decode(hex_digest).map_err(|_| SignatureError::Malformed)?;
    claimed.try_into().map(Claimed).map_err(|_| SignatureError::Malformed)
}

/// Whether `claimed` is the HMAC of `body` under `secret`, compared in constant time.
pub fn check(secret: &[u8], body: &[u8], claimed: &Claimed) -> Result<(), SignatureError> {
    let expected = hmac_sha256(secret, body);
    if bool::from(expected.ct_eq(&claimed.0)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// An HMAC-SHA256 digest a request claims for its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed([u8; 32]);

/// The header value GitHub would send for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published test vector, from `tests/data/github/signature-vector.json`.
    fn vector() -> (String, String, String) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/github/signature-vector.json");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let field = |k: &str| v[k].as_str().unwrap().to_string();
        (field("secret"), field("payload"), field("header"))
    }

    #[test]
    fn github_test_vector_verifies() {
        let (secret, payload, header) = vector();
        assert_eq!(sign(secret.as_bytes(), payload.as_bytes()), header);
        assert_eq!(verify(secret.as_bytes(), payload.as_bytes(), Some(header.as_bytes())), Ok(()));
    }

    #[test]
    fn anything_else_is_refused() {
        let (secret, payload, header) = vector();
        let (secret, payload) = (secret.as_bytes(), payload.as_bytes());
        assert_eq!(verify(secret, payload, None), Err(SignatureError::Missing));
        assert_eq!(verify(secret, b"Hello, World?", Some(header.as_bytes())), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"other secret", payload, Some(header.as_bytes())), Err(SignatureError::Mismatch));
        let sha1_style = header.replace("sha256=", "sha1=");
        assert_eq!(verify(secret, payload, Some(sha1_style.as_bytes())), Err(SignatureError::Malformed));
        assert_eq!(verify(secret, payload, Some(b"sha256=zz")), Err(SignatureError::Malformed));
        assert_eq!(verify(secret, payload, Some(&header.as_bytes()[..20])), Err(SignatureError::Malformed));
    }
}
