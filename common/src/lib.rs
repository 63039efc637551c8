//! Pieces the demofleet controller and agent must agree on: how a pull request becomes a
//! demo name, which labels a demo container carries, the broker topology, the
//! versioned messages that travel over RabbitMQ and NATS, and what a GitHub webhook says.
//!
//! # Layout
//! - [`consume`]: consuming a queue with bounded concurrency.
//! - [`duration`]: parsing durations in settings.
//! - [`messaging`]: RabbitMQ and NATS settings shared by both binaries.
//! - [`names`]: sanitizing `(repo, owner, pr)` into a DNS label and folder name.
//! - [`labels`]: the container label keys and the full label set of a demo.
//! - [`wire`]: step messages, step results and heartbeats (serde, versioned).
//! - [`retry`]: back-off for reconnect loops.
//! - [`secret`]: settings that never reach a log.
//! - [`sealed`]: secrets sealed with an AEAD (XChaCha20-Poly1305) under a key read from a file.
//! - [`signal`]: waiting for SIGINT or SIGTERM.
//! - [`subjects`]: NATS subjects of heartbeats and log lines, and reading them back.
//! - [`tls`]: TLS between hosts: its settings, the plain-text rule, the rustls client set-up.
//! - [`topology`]: exchange, queue and subject names; declaring them on a channel.
//! - [`validate`]: every field of a step message checked before an agent acts on it.
//! - [`webhook`]: GitHub webhook signatures and payloads, read without I/O.
//!
//! `consume`, `messaging`, `retry`, `signal`, `tls` and `topology` need the default `runtime`
//! feature; the rest is pure, which is all the fuzz targets in `fuzz/` build.

#[cfg(feature = "runtime")]
pub mod consume;
pub mod duration;
pub mod labels;
#[cfg(feature = "runtime")]
pub mod messaging;
pub mod names;
#[cfg(feature = "runtime")]
pub mod retry;
pub mod sealed;
pub mod secret;
#[cfg(feature = "runtime")]
pub mod signal;
pub mod subjects;
#[cfg(feature = "runtime")]
pub mod tls;
#[cfg(feature = "runtime")]
pub mod topology;
pub mod validate;
pub mod webhook;
pub mod wire;
