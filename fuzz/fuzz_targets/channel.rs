//! What arrives over the control channel, from anyone who can publish on it: bytes read as
//! each message the controller and the agents take (step messages, step results, cleanups,
//! heartbeats) never panic; a message that reads writes back to the same message; a step
//! message the agent's checks (`common/src/validate.rs`) accept has nothing in it that git,
//! Docker or a path could take for something else; and a NATS subject read as a log subject
//! names a host and a demo whose log subject it is, exactly.
//!
//! Input: the message's bytes (JSON, as on the wire); its first line is also read as a
//! subject.
#![no_main]

use demofleet_common::{subjects, validate};
use demofleet_common::wire::{Cleanup, Heartbeat, StepMessage, StepResult};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// `data` read as `T`, if it reads, after checking that it writes back to itself.
fn read<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let message: T = serde_json::from_slice(data).ok()?;
    let written = serde_json::to_vec(&message).expect("a message that reads writes");
    let again: T = serde_json::from_slice(&written).expect("what was written reads");
    assert_eq!(again, message);
    Some(message)
}

fuzz_target!(|data: &[u8]| {
    if let Some(subject) = std::str::from_utf8(data).ok().and_then(|s| s.lines().next()) {
        if let Some((host, demo)) = subjects::read_log_subject("demofleet", subject) {
            assert!(!host.is_empty() && !host.contains('.'), "{subject:?}");
            assert_eq!(subjects::log_subject("demofleet", host, &demo), subject);
        }
    }
    let _ = read::<StepResult>(data);
    let _ = read::<Heartbeat>(data);
    if let Some(cleanup) = read::<Cleanup>(data) {
        for id in &cleanup.containers {
            if validate::container_id(id).is_ok() {
                assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");
            }
        }
    }
    let Some(message) = read::<StepMessage>(data) else { return };
    // No local root: every file:// URL is refused.
    if validate::spec(&message.demo, None).is_err() {
        return;
    }
    let demo = &message.demo;
    let label = |s: &str| !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    assert!(label(&demo.name) && demo.name.bytes().all(|b| !b.is_ascii_uppercase()), "name {:?}", demo.name);
    assert!(!demo.name.starts_with('-') && !demo.name.ends_with('-'), "name {:?}", demo.name);
    assert!(demo.sha.bytes().all(|b| b.is_ascii_hexdigit()) && matches!(demo.sha.len(), 40 | 64), "sha {:?}", demo.sha);
    let url = &demo.clone_url;
    assert!(url.starts_with("https://") || url.starts_with("http://"), "clone_url {url:?}");
    assert!(!url.bytes().any(|b| b <= b' ' || b == 0x7f), "clone_url {url:?}");
    assert!(demo.hostname.strip_prefix(demo.name.as_str()).is_some_and(|r| r.starts_with('.')), "{demo:?}");
    assert!(demo.url.starts_with("http://") || demo.url.starts_with("https://"), "url {:?}", demo.url);
    for part in [&demo.owner, &demo.repo, &demo.github_user] {
        assert!(!part.is_empty() && !part.contains(['/', '\n', '\0']) && part != ".." && part != ".", "{part:?}");
    }
    assert!(demo.pr > 0 && demo.generation > 0, "{demo:?}");
});
