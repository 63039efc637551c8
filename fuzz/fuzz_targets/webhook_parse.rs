//! A delivery as the intake reads it: `X-GitHub-Event`, content type and body → the event or
//! a clean error, never a panic; then the checks the intake runs on what it got.
//!
//! Input: `<event>\n<content type>\n<body>`.
#![no_main]

use demofleet_common::names;
use demofleet_common::webhook::delivery::{self, Delivery, DeliveryError};
use demofleet_common::webhook::event;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let event = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let content_type = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    let read = delivery::read(&event, &content_type, body);
    match &read {
        Ok(Delivery::PullRequest(pr)) => {
            let _ = pr.intent();
            let _ = event::is_commit_sha(&pr.pull_request.head.sha);
            // What the intake then makes of it (controller/src/webhook/mod.rs, deploy_request).
            let (owner, repo) = (&pr.repository.owner.login, &pr.repository.name);
            if names::validate_owner(owner).is_ok() && names::validate_repo(repo).is_ok() {
                if let Ok(name) = names::demo_name(repo, owner, pr.number) {
                    assert!(names::is_valid_name(&name), "{name:?}");
                }
            }
        }
        Ok(Delivery::IssueComment(comment)) => {
            let _ = (comment.is_approval(), comment.approved_sha());
        }
        Ok(Delivery::Ping | Delivery::Other { .. }) => {}
        // The message is what the client is told.
        Err(err) => assert!(!err.to_string().is_empty()),
    }

    // The same document sent as a form's `payload` field reads the same. (Forms are read as
    // UTF-8, lossily, so only a UTF-8 document can round-trip.)
    let Ok(json) = delivery::json_payload(&content_type, body) else { return };
    if std::str::from_utf8(&json).is_err() {
        return;
    }
    let form = format!("payload={}", form_urlencoded::byte_serialize(&json).collect::<String>());
    let as_form = delivery::read(&event, "application/x-www-form-urlencoded", form.as_bytes());
    assert_eq!(summary(&read), summary(&as_form), "{form:?}");
});

/// The kind of delivery, or the error message: what the intake's answer depends on.
fn summary(read: &Result<Delivery, DeliveryError>) -> String {
    match read {
        Ok(Delivery::Ping) => "ping".into(),
        Ok(Delivery::PullRequest(pr)) => format!("pull_request {} {}", pr.action, pr.number),
        Ok(Delivery::IssueComment(c)) => format!("issue_comment {} {}", c.action, c.issue.number),
        Ok(Delivery::Other { action }) => format!("other {action:?}"),
        Err(err) => err.to_string(),
    }
}
