//! The edge's own pages, as plain responses whatever the server sends them with. The 404
//! page says nothing about which demos exist.

use bytes::Bytes;
use http::{header, Response, StatusCode};

pub fn not_found() -> Response<Bytes> {
    page(
        StatusCode::NOT_FOUND,
        "No demo here",
        "There is no demo at this address. It may have been stopped when its pull request closed.",
    )
}

pub fn bad_gateway() -> Response<Bytes> {
    page(
        StatusCode::BAD_GATEWAY,
        "Demo not answering",
        "This demo exists but did not answer. It may be starting or restarting; try again shortly.",
    )
}

/// Send the visitor to `location` (sign in, or on after signing in), setting `set_cookie`.
pub fn redirect(location: &str, set_cookie: Option<&str>) -> Response<Bytes> {
    let mut response = page(StatusCode::FOUND, "Sign in to see this demo", "Redirecting to sign in.");
    let headers = response.headers_mut();
    if let Ok(location) = location.parse() {
        headers.insert(header::LOCATION, location);
    }
    if let Some(cookie) = set_cookie.and_then(|c| c.parse().ok()) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The gate refused the request with `status`, saying why in `message` (text of our own).
pub fn refused(status: StatusCode, message: &str) -> Response<Bytes> {
    page(status, "Not let in", message)
}

/// Seconds between reloads of the "waking up" page.
const WAKE_REFRESH: u32 = 2;

/// A sleeping demo was asked for: it is being started; the page reloads itself until the
/// demo answers instead.
pub fn waking_up() -> Response<Bytes> {
    let refresh = format!("<meta http-equiv=\"refresh\" content=\"{WAKE_REFRESH}\">");
    let mut response = page_with_head(
        StatusCode::SERVICE_UNAVAILABLE,
        "Waking up the demo",
        "Nobody visited this demo for a while, so it was put to sleep. It is starting again; \
         this page reloads by itself until it is ready.",
        &refresh,
    );
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, WAKE_REFRESH.into());
    headers.insert("refresh", WAKE_REFRESH.into());
    response
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<Bytes> {
    page_with_head(status, title, text, "")
}

fn page_with_head(status: StatusCode, title: &str, text: &str, head: &str) -> Response<Bytes> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">{head}<title>{title} · demofleet</title></head>\n\
         <body><main><h1>{title}</h1><p>{text}</p><p><small>{} · demofleet</small></p></main></body></html>\n",
        status.as_u16()
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Bytes::from(html))
        .expect("static response parts are valid")
}
