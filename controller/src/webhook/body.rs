//! A delivery's body, read only once its headers allow it: a declared length within
//! DEMOFLEET_WEBHOOK_MAX_BYTES, room for it among all the bodies held in memory at once
//! (DEMOFLEET_WEBHOOK_BUFFER_BYTES), and the whole of it within DEMOFLEET_HTTP_BODY_TIMEOUT.
//! So a stranger's request costs no memory until its headers look like GitHub's, and all of
//! them together cost at most the buffer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::ApiError;
use crate::listener::BodyTimeout;

/// The room for webhook bodies, counted in KiB.
pub struct Bodies {
    room: Arc<Semaphore>,
    max_bytes: usize,
    /// How long a body waits for room: as long as it may take to arrive.
    wait: Duration,
}

impl Bodies {
    pub fn new(config: &Config) -> Bodies {
        // The buffer holds at least one body of the largest size, or that size could never be read.
        let room = kib(config.webhook_buffer_bytes.max(config.webhook_max_bytes));
        Bodies {
            room: Arc::new(Semaphore::new(room as usize)),
            max_bytes: config.webhook_max_bytes,
            wait: config.http_body_timeout,
        }
    }

    /// Read `body`, sent with `headers`. Refused before a byte is read when it declares no
    /// length (411), too large a one (413), or finds no room in time (503); 408 when it does
    /// not arrive in time.
    pub async fn read(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        let length = declared_length(headers, self.max_bytes)?;
        let _room = tokio::time::timeout(self.wait, self.room.acquire_many(kib(length)))
            .await
            .map_err(|_| {
                ApiError::Unavailable(
                    "webhook bodies being read fill DEMOFLEET_WEBHOOK_BUFFER_BYTES; deliver again later".into(),
                )
            })?
            .expect("the room is never closed");
        axum::body::to_bytes(body, length).await.map_err(|err| {
            if BodyTimeout::caused(&err) {
                ApiError::RequestTimeout(format!("{err}: the body did not arrive within DEMOFLEET_HTTP_BODY_TIMEOUT"))
            } else {
                ApiError::BadRequest(format!("reading the body: {err}"))
            }
        })
    }
}

/// The body's length as `Content-Length` declares it, at most `max`.
fn declared_length(headers: &HeaderMap, max: usize) -> Result<usize, ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .ok_or_else(|| ApiError::LengthRequired("a delivery must declare its Content-Length, as GitHub's do".into()))?;
    let length: usize = length
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::BadRequest("Content-Length is not a number".into()))?;
    if length > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "a body of {length} bytes is over DEMOFLEET_WEBHOOK_MAX_BYTES ({max})"
        )));
    }
    Ok(length)
}

/// `bytes` in KiB, rounded up, and at least one so that every body takes some room.
fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use tokio::sync::Semaphore;

    use super::{declared_length, kib, Bodies};

    fn with_length(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert("content-length", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_declared_length_decides_before_the_body_is_read() {
        assert_eq!(declared_length(&with_length(Some("100")), 100).unwrap(), 100);
        let status = |v| declared_length(&with_length(v), 100).unwrap_err().status();
        assert_eq!(status(Some("101")), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(status(None), StatusCode::LENGTH_REQUIRED);
        assert_eq!(status(Some("-1")), StatusCode::BAD_REQUEST);
        assert_eq!(status(Some("1e3")), StatusCode::BAD_REQUEST);
        assert_eq!((kib(0), kib(1), kib(1024), kib(1025)), (1, 1, 1, 2));
    }

    #[tokio::test]
    async fn a_body_finds_room_or_is_told_to_come_back() {
        let bodies = Bodies { room: Arc::new(Semaphore::new(2)), max_bytes: 2048, wait: Duration::from_millis(100) };
        let headers = with_length(Some("2048"));
        let read = bodies.read(&headers, Body::from(vec![b'x'; 2048])).await.unwrap();
        assert_eq!(read.len(), 2048, "room for one");
        let held = bodies.room.clone().acquire_many_owned(1).await.unwrap();
        let full = bodies.read(&headers, Body::from(vec![b'x'; 2048])).await.unwrap_err();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE, "{full}");
        assert!(full.to_string().contains("DEMOFLEET_WEBHOOK_BUFFER_BYTES"), "{full}");
        drop(held);
        assert!(bodies.read(&headers, Body::from(vec![b'x'; 2048])).await.is_ok(), "room again once freed");
    }
}
