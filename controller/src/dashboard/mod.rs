//! The admins' dashboard: server-rendered pages (askama templates in `templates/`), usable
//! without JavaScript; the demo page's live log is the only script. Every page needs a
//! session ([`crate::auth::guard::dashboard`]); every form that changes anything carries the
//! session's CSRF token.
//!
//! # Layout
//! - [`pages`]: what is shown (`GET`).
//! - [`forms`]: what is done (`POST`), through [`crate::actions`], then a redirect back.
//! - [`layout`]: what every page shares: the frame, errors as pages, rendering.

pub mod charts;
pub mod forms;
pub mod layout;
pub mod pages;

use axum::Router;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    pages::router().merge(forms::router())
}
