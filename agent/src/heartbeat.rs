//! Heartbeats: every interval, this host's capacity and demo inventory on NATS.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use demofleet_common::topology;
use demofleet_common::wire::{Disk, Heartbeat, WIRE_VERSION};

use crate::{docker, AgentContext};

pub async fn run(ctx: Arc<AgentContext>, stop: CancellationToken) {
    let subject = topology::heartbeat_subject(&ctx.config.messaging.nats_prefix, &ctx.host_id);
    let mut interval = tokio::time::interval(ctx.config.heartbeat_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let inventory = docker::inventory(&ctx.docker, &ctx.host_id).await.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "reading the inventory failed; sending an empty one");
            Vec::new()
        });
        let beat = Heartbeat {
            version: WIRE_VERSION,
            host_id: ctx.host_id.clone(),
            address: ctx.config.host_address.clone(),
            capacity: ctx.config.capacity,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            inventory,
            disk: disk(&ctx.config.demo_dir)
                .inspect_err(|err| tracing::warn!(error = %err, "reading the demo directory's free space failed"))
                .ok(),
        };
        let payload = serde_json::to_vec(&beat).expect("heartbeats serialize");
        if let Err(err) = ctx.nats.publish(subject.clone(), payload.into()).await {
            tracing::warn!(error = %err, "sending a heartbeat failed");
        }
    }
}

/// Size and free space (for unprivileged users) of the file system holding `path`.
// statvfs's field types differ between platforms; on some the conversions are no-ops.
#[allow(clippy::useless_conversion)]
pub fn disk(path: &Path) -> std::io::Result<Disk> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated path and `stats` is writable memory of the size
    // statvfs fills; it is read only after statvfs reported success.
    let stats = unsafe {
        if libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stats.assume_init()
    };
    let block = u64::from(stats.f_frsize);
    Ok(Disk { total_bytes: u64::from(stats.f_blocks) * block, free_bytes: u64::from(stats.f_bavail) * block })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_directory_s_file_system_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        let measured = disk(dir.path()).unwrap();
        assert!(measured.total_bytes > 0 && measured.free_bytes <= measured.total_bytes, "{measured:?}");
        assert!(disk(&dir.path().join("missing")).is_err());
    }
}
