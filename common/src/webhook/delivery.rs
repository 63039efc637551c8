//! A delivery's `X-GitHub-Event` header, content type and body → the event it carries.

use std::borrow::Cow;

use super::event::{self, IssueCommentEvent, PayloadError, PullRequestEvent};

/// The event a delivery carries, parsed as far as demofleet needs it.
#[derive(Debug)]
pub enum Delivery {
    Ping,
    PullRequest(PullRequestEvent),
    IssueComment(IssueCommentEvent),
    /// An event demofleet does not use, with the payload's `action` if it names one.
    Other {
        action: Option<String>,
    },
}

/// Why a delivery cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("content type {0:?} is not supported; use application/json or application/x-www-form-urlencoded")]
    UnsupportedMediaType(String),
    #[error("form body has no `payload` field")]
    NoFormPayload,
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// Read a delivery of `event` (the `X-GitHub-Event` header) sent as `content_type`.
pub fn read(event: &str, content_type: &str, body: &[u8]) -> Result<Delivery, DeliveryError> {
    let payload = json_payload(content_type, body)?;
    Ok(match event {
        "ping" => Delivery::Ping,
        "pull_request" => Delivery::PullRequest(event::parse(&payload)?),
        "issue_comment" => Delivery::IssueComment(event::parse(&payload)?),
        _ => {
            let value = event::parse::<serde_json::Value>(&payload).ok();
            Delivery::Other { action: value.and_then(|v| v["action"].as_str().map(String::from)) }
        }
    })
}

/// The JSON document of a delivery: the body itself, or the `payload` field of a form.
pub fn json_payload<'b>(content_type: &str, body: &'b [u8]) -> Result<Cow<'b, [u8]>, DeliveryError> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Ok(Cow::Borrowed(body)),
        "application/x-www-form-urlencoded" => form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .map(|(_, v)| Cow::Owned(v.into_owned().into_bytes()))
            .ok_or(DeliveryError::NoFormPayload),
        _ => Err(DeliveryError::UnsupportedMediaType(mime)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_bodies_carry_the_same_event() {
        let json = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
        let form = format!("payload={}", form_urlencoded::byte_serialize(json).collect::<String>());
        assert!(matches!(read("ping", "application/json; charset=utf-8", json), Ok(Delivery::Ping)));
        assert!(matches!(read("ping", "Application/X-WWW-Form-Urlencoded", form.as_bytes()), Ok(Delivery::Ping)));
        assert!(matches!(
            read("ping", "application/x-www-form-urlencoded", b"zen=1"),
            Err(DeliveryError::NoFormPayload)
        ));
        assert!(
            matches!(read("ping", "text/plain", json), Err(DeliveryError::UnsupportedMediaType(m)) if m == "text/plain")
        );
    }

    #[test]
    fn unused_events_keep_their_action_and_bad_payloads_name_the_field() {
        let Ok(Delivery::Other { action }) = read("push", "application/json", br#"{"action":"x"}"#) else { panic!() };
        assert_eq!(action.as_deref(), Some("x"));
        let Ok(Delivery::Other { action }) = read("push", "application/json", b"not json") else { panic!() };
        assert_eq!(action, None);
        let Err(DeliveryError::Payload(err)) = read("pull_request", "application/json", br#"{"action":1}"#) else {
            panic!()
        };
        assert_eq!(err.path, "action");
    }
}
