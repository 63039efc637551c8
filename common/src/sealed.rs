//! Secrets sealed with an AEAD: XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`), a
//! random 24-byte nonce per value, and associated data that names what the value belongs to
//! (a repository's variable at rest, a demo's generation in a step message), so a sealed value
//! moved elsewhere does not open. Whoever lacks the key learns nothing but the length.
//!
//! Keys are 32 random bytes in a file, raw or as 64 hex digits (`openssl rand -hex 32`).

use std::fmt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

const NONCE_LEN: usize = 24;

/// A 32-byte key; its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct Key([u8; 32]);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: a key is 32 random bytes, raw or as 64 hex digits (make one with `openssl rand -hex 32`)")]
    Malformed { path: String },
}

/// A sealed value did not open: another key, other associated data, or altered bytes.
#[derive(Debug, thiserror::Error)]
#[error("a sealed value does not open with this key (another key, or not sealed for this place)")]
pub struct OpenError;

impl Key {
    /// The key in `path`: 64 hex digits (surrounding white space ignored) or 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<Key, KeyError> {
        let bytes =
            std::fs::read(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        Key::from_bytes(&bytes).ok_or_else(|| KeyError::Malformed { path: path.display().to_string() })
    }

    /// A key from a file's content, as [`Key::from_file`] reads it.
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        if let Some(decoded) = text.filter(|t| t.len() == 64).and_then(|t| hex::decode(t).ok()) {
            return decoded.try_into().ok().map(Key);
        }
        <[u8; 32]>::try_from(bytes).ok().map(Key)
    }

    /// `plaintext` sealed for `aad`: a fresh random nonce followed by the ciphertext and tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).expect("sealing in memory cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// What [`Key::seal`] sealed for `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher = XChaCha20Poly1305::new((&self.0).into());
        cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map_err(|_| OpenError)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(***)")
    }
}

/// Associated data of a repository's variable `name` at rest.
pub fn at_rest_aad(owner: &str, repo: &str, name: &str) -> Vec<u8> {
    format!("demofleet secret\0{owner}\0{repo}\0{name}").into_bytes()
}

/// Associated data of a demo's variables in the step messages of its generation.
pub fn transport_aad(demo_id: uuid::Uuid, generation: i64) -> Vec<u8> {
    format!("demofleet env\0{demo_id}\0{generation}").into_bytes()
}

/// Environment variables as they travel sealed: `NAME=value` lines' pairs, in JSON.
pub fn seal_env(key: &Key, aad: &[u8], vars: &[(String, String)]) -> String {
    let json = serde_json::to_vec(vars).expect("pairs of strings serialize");
    hex::encode(key.seal(aad, &json))
}

/// What [`seal_env`] sealed.
pub fn open_env(key: &Key, aad: &[u8], sealed: &str) -> Result<Vec<(String, String)>, OpenError> {
    let bytes = hex::decode(sealed).map_err(|_| OpenError)?;
    serde_json::from_slice(&key.open(aad, &bytes)?).map_err(|_| OpenError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key([byte; 32])
    }

    #[test]
    fn opens_only_with_its_key_and_its_place() {
        let sealed = key(1).seal(b"here", b"hunter2");
        assert_eq!(key(1).open(b"here", &sealed).unwrap(), b"hunter2");
        assert!(key(2).open(b"here", &sealed).is_err());
        assert!(key(1).open(b"there", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key(1).open(b"here", &altered).is_err());
        assert!(key(1).open(b"here", &sealed[..10]).is_err());
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_ne!(sealed, key(1).seal(b"here", b"hunter2"), "a fresh nonce each time");
    }

    #[test]
    fn keys_are_read_raw_or_hex() {
        let hex = "00".repeat(31) + "ff";
        assert!(Key::from_bytes(hex.as_bytes()).is_some());
        assert!(Key::from_bytes(format!("  {hex}\n").as_bytes()).is_some());
        assert!(Key::from_bytes(&[7u8; 32]).is_some());
        assert!(Key::from_bytes(b"short").is_none());
        assert!(Key::from_bytes(&[7u8; 33]).is_none());
        assert_eq!(format!("{:?}", key(9)), "Key(***)");
    }

    #[test]
    fn environments_travel_sealed() {
        let vars = vec![("API_KEY".to_string(), "s3cr3t".to_string())];
        let sealed = seal_env(&key(3), b"demo", &vars);
        assert!(!sealed.contains("s3cr3t") && !sealed.contains("API_KEY"));
        assert_eq!(open_env(&key(3), b"demo", &sealed).unwrap(), vars);
        assert!(open_env(&key(3), b"other", &sealed).is_err());
    }
}
