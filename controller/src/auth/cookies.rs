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
}
