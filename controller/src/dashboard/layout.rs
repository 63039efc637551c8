//! What every dashboard page shares: the frame (who is signed in, the CSRF token its forms
//! carry), failures shown as pages with the right status, and rendering.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::error::ApiError;

/// What every page's frame shows: who is signed in, and the token its forms carry.
pub struct Layout {
    pub email: String,
    pub csrf: String,
}

impl Layout {
    pub fn of(who: &Principal) -> Layout {
        match who {
            Principal::Person(session) => Layout { email: session.email.clone(), csrf: session.csrf.clone() },
            // The dashboard's guard admits sessions only.
            Principal::Token { .. } => Layout { email: who.actor(), csrf: String::new() },
        }
    }

    /// Refuse a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), ApiError> {
        if sent.is_empty() || sent != self.csrf {
            return Err(ApiError::Forbidden(
                "the form's CSRF token does not match your session; reload the page".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: &'a Layout,
    title: &'a str,
    message: &'a str,
}

/// A page's failure, shown as a page with the right status.
pub struct PageError {
    status: StatusCode,
    message: String,
    layout: Layout,
}

impl PageError {
    pub fn new(layout: Layout, err: ApiError) -> PageError {
        let status = err.status();
        let message = match &err {
            // Details of these stay in the log.
            ApiError::Database(_) | ApiError::Internal(_) => {
                tracing::error!(error = %err, "dashboard request failed");
                "Something went wrong on our side; it has been logged.".to_string()
            }
            _ => err.to_string(),
        };
        PageError { status, message, layout }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let page = ErrorPage { layout: &self.layout, title, message: &self.message };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

/// Render `page`, or fail as a server error.
pub fn render(page: &impl Template) -> Result<Html<String>, ApiError> {
    page.render().map(Html).map_err(|e| ApiError::Internal(e.into()))
}

/// "3 min", "2 h", "5 d": how long ago `then` was.
pub fn age(then: OffsetDateTime) -> String {
    let seconds = (OffsetDateTime::now_utc() - then).whole_seconds().max(0);
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    }
}
