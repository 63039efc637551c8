//! What a GitHub webhook delivery says, read without I/O: the controller's intake calls
//! these, and the fuzz targets in `fuzz/` drive them with arbitrary bytes.
//!
//! # Layout
//! - [`signature`]: `X-Hub-Signature-256` checking.
//! - [`event`]: the payload fields we read and what each action asks for.
//! - [`delivery`]: a delivery's content type, body and event header → the event it carries.

pub mod delivery;
pub mod event;
pub mod signature;
