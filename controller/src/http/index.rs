//! `/`: a plain page listing the demos. The full dashboard (behind OIDC) replaces it.

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use super::api::DemoView;
use crate::db::demos;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(index))
}

async fn index(State(app): State<AppState>) -> Result<Html<String>, ApiError> {
    let list = demos::list(&app.db).await?;
    let mut rows = String::new();
    for demo in list.into_iter().map(|d| DemoView::new(&app, d)) {
        let url = escape(&demo.url);
        rows.push_str(&format!(
            "<tr><td>{}/{}</td><td>#{}</td><td>{}</td><td>{}</td><td><a href=\"{url}\">{url}</a></td></tr>\n",
            escape(&demo.owner),
            escape(&demo.repo),
            demo.pr,
            escape(&demo.state),
            escape(demo.host.as_deref().unwrap_or("-")),
        ));
    }
    Ok(Html(format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>demofleet</title></head>\n<body><main>\n\
         <h1>Demos</h1>\n<table>\n<thead><tr><th>Repository</th><th>PR</th><th>State</th><th>Host</th><th>URL</th></tr></thead>\n\
         <tbody>\n{rows}</tbody>\n</table>\n</main></body></html>\n"
    )))
}

fn escape(raw: &str) -> String {
    raw.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
