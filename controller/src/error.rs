//! The controller's HTTP error: bad input gets a specific 4xx and a message saying what is
//! wrong; internal errors are logged with their cause and the client learns only that.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    LengthRequired(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The controller cannot take the request now (it is shutting down); try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::LengthRequired(_) => StatusCode::LENGTH_REQUIRED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A unique-key violation means the client asked for something that clashes with what
    /// exists: 409 with `message`. Any other database error stays internal.
    pub fn conflict_on_unique(err: sqlx::Error, message: impl Into<String>) -> ApiError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => ApiError::Conflict(message.into()),
            _ => ApiError::Database(err),
        }
    }
}

impl From<crate::enrolment::EnrolError> for ApiError {
    fn from(err: crate::enrolment::EnrolError) -> ApiError {
        use crate::enrolment::EnrolError;
        match err {
            EnrolError::BadHost(why) => ApiError::BadRequest(why),
            EnrolError::NotEnrolled(_) => ApiError::NotFound(err.to_string()),
            EnrolError::Database(err) => ApiError::Database(err),
            EnrolError::Broker(err) => ApiError::Unavailable(format!("{err:#}")),
        }
    }
}

impl From<crate::scheduler::orchestrate::ActionError> for ApiError {
    fn from(err: crate::scheduler::orchestrate::ActionError) -> ApiError {
        use crate::scheduler::orchestrate::ActionError;
        match err {
            ActionError::NotFound(what) => ApiError::NotFound(format!("no such {what}")),
            ActionError::Refused(why) => ApiError::Conflict(why),
            ActionError::Database(err) => ApiError::Database(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Database(err) => tracing::error!(error = %err, "database error"),
            ApiError::Internal(err) => {
                tracing::error!(error = format!("{err:#}"), "internal error")
            }
            _ => tracing::debug!(%status, message = %self, "request refused"),
        }
        let unread = matches!(self, ApiError::PayloadTooLarge(_) | ApiError::LengthRequired(_));
        let mut response = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if unread {
            // The body was refused unread: the connection closes after this answer and says
            // so, or a client would send its next request on it and find it gone.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
