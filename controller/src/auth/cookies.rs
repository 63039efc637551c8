//! Cookies: reading one from a request, making a safe `Set-Cookie`; and the redirects of
//! sign-in, which no cache may keep.

use std::time::Duration;

use axum::http::HeaderMap;

/// A redirect (302) to `location` that no cache keeps: sign-in's every hop.
pub fn found(location: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let headers =
        [(axum::http::header::LOCATION, location.to_string()), (axum::http::header::CACHE_CONTROL, "no-store".into())];
    (axum::http::StatusCode::FOUND, headers).into_response()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// True when `path` is a path of this site and nothing else, as a browser would read it in
/// a `Location`: printable ASCII starting with one `/`, and neither it nor its
/// percent-decoded form holds a backslash or a control character, or starts with `//` or
/// `/\`. Browsers drop tabs and newlines and read `\` as `/`, so `/%09/evil.example` or
/// `/\evil.example` would leave the site.
pub fn same_site_path(path: &str) -> bool {
    let decoded = percent_decode(path);
    let clean = |bytes: &[u8]| {
        bytes.first() == Some(&b'/')
            && !matches!(bytes.get(1), Some(b'/' | b'\\'))
            && !bytes.iter().any(|&b| b == b'\\' || b.is_ascii_control())
    };
    clean(path.as_bytes()) && clean(&decoded) && path.bytes().all(|b| b.is_ascii_graphic())
}

/// `%XX` sequences decoded once; anything else kept as it is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match hex.filter(|_| bytes[i] == b'%').and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// A `Set-Cookie` value: host-only, HttpOnly, SameSite=Lax, Secure under https; `max_age`
/// zero removes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}", max_age.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SESSION_COOKIE;

    #[test]
    fn cookies_are_found_and_made_safe() {
        let mut headers = HeaderMap::new();
        headers.insert("cookie", "a=1; demofleet_session=tok; b=2".parse().unwrap());
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "c"), None);
        let made = set_cookie(SESSION_COOKIE, "v", Duration::from_secs(60), true);
        assert_eq!(made, "demofleet_session=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure");
        assert!(!set_cookie("x", "v", Duration::ZERO, false).contains("Secure"));
    }

    #[test]
    fn only_paths_of_this_site_are_same_site() {
        for good in ["/", "/demos?x=1", "/a/b%20c", "/a%2Fb"] {
            assert!(same_site_path(good), "{good}");
        }
        for bad in [
            "",
            "evil.example",
            "//evil.example",
            "/\\evil.example",
            "/%09/evil.example/",
            "/\t/evil.example/",
            "/%5Cevil.example",
            "/%2F/evil.example",
            "/x\\y",
            "/a b",
            "/x%0d%0aSet-Cookie:a=b",
            "https://evil.example/",
            "/é",
        ] {
            assert!(!same_site_path(bad), "{bad:?}");
        }
    }
}
