//! `X-Hub-Signature-256` checking: any secret, body and header is judged without a panic and
//! for the right reason; what we sign verifies, and one changed digit, body bit or secret
//! bit does not.
//!
//! Input: `<secret>\n<header>\n<body>`; with no second line there is no header.
#![no_main]

use demofleet_common::webhook::signature::{self, SignatureError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let secret = parts.next().unwrap_or_default();
    let header = parts.next();
    let body = parts.next().unwrap_or_default();

    let signed = signature::sign(secret, body);
    match signature::verify(secret, body, header) {
        // Only our digest passes, in either case of hex.
        Ok(()) => {
            let header = header.expect("verified without a header");
            assert!(header.starts_with(b"sha256=") && header[7..].eq_ignore_ascii_case(&signed.as_bytes()[7..]));
        }
        Err(SignatureError::Missing) => assert!(header.is_none()),
        Err(SignatureError::Malformed) => assert!(!well_formed(header.expect("malformed without a header"))),
        Err(SignatureError::Mismatch) => assert!(well_formed(header.expect("mismatch without a header"))),
    }

    assert_eq!(signature::verify(secret, body, Some(signed.as_bytes())), Ok(()));
    let upper = format!("sha256={}", signed[7..].to_ascii_uppercase());
    assert_eq!(signature::verify(secret, body, Some(upper.as_bytes())), Ok(()));

    // Where to tamper: anywhere, chosen by the input.
    let at = data.iter().fold(data.len(), |acc, &b| acc.wrapping_mul(31).wrapping_add(b as usize));
    let mut digit = signed.clone().into_bytes();
    let i = 7 + at % 64;
    digit[i] = b"0123456789abcdef"[(hex_value(digit[i]) + 1) % 16];
    assert_eq!(signature::verify(secret, body, Some(&digit)), Err(SignatureError::Mismatch));
    if !body.is_empty() {
        let mut body = body.to_vec();
        let i = at % body.len();
        body[i] ^= 1 << (at % 8);
        assert_eq!(signature::verify(secret, &body, Some(signed.as_bytes())), Err(SignatureError::Mismatch));
    }
    if !secret.is_empty() {
        let mut secret = secret.to_vec();
        let i = at % secret.len();
        secret[i] ^= 1 << (at % 8);
        assert_eq!(signature::verify(&secret, body, Some(signed.as_bytes())), Err(SignatureError::Mismatch));
    }
});

/// `sha256=` and 64 hex digits, of either case: the shape GitHub sends.
fn well_formed(header: &[u8]) -> bool {
    header.strip_prefix(b"sha256=").is_some_and(|hex| hex.len() == 64 && hex.iter().all(u8::is_ascii_hexdigit))
}

fn hex_value(digit: u8) -> usize {
    (digit as char).to_digit(16).expect("sign writes hex") as usize
}
