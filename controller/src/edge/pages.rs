//! The edge's own pages. The 404 page says nothing about which demos exist.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::proxy::EdgeBody;

pub fn not_found() -> Response<EdgeBody> {
    page(
        StatusCode::NOT_FOUND,
        "No demo here",
        "There is no demo at this address. It may have been stopped when its pull request closed.",
    )
}

pub fn bad_gateway() -> Response<EdgeBody> {
    page(
        StatusCode::BAD_GATEWAY,
        "Demo not answering",
        "This demo exists but did not answer. It may be starting or restarting; try again shortly.",
    )
}

fn page(status: StatusCode, title: &str, text: &str) -> Response<EdgeBody> {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · demofleet</title></head>\n\
         <body><main><h1>{title}</h1><p>{text}</p><p><small>{} · demofleet</small></p></main></body></html>\n",
        status.as_u16()
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed())
        .expect("static response parts are valid")
}
