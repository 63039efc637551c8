//! NATS subjects: hosts' heartbeats and demos' log lines, each under its host's own
//! `<prefix>.host.<id>.`, the only subjects an enrolled host's NATS user may publish on.
//! Pure, so the fuzz targets read subjects as the controller does.

/// NATS subject of a host's heartbeats under `prefix` (default `demofleet`).
pub fn heartbeat_subject(prefix: &str, host_id: &str) -> String {
    format!("{prefix}.host.{host_id}.heartbeat")
}

/// NATS subject matching every host's heartbeats.
pub fn all_heartbeats(prefix: &str) -> String {
    format!("{prefix}.host.*.heartbeat")
}

/// NATS header of a log line: the generation of the demo it belongs to.
pub const LOG_GENERATION_HEADER: &str = "Demofleet-Generation";
/// NATS header of a log line: the step that printed it (`checkout`, `build`, …), or `run`
/// for the running container's own output.
pub const LOG_STEP_HEADER: &str = "Demofleet-Step";

/// NATS subject matching every demo's log lines, from every host.
pub fn all_logs(prefix: &str) -> String {
    format!("{prefix}.host.*.demo.*.log")
}

/// NATS subject of demo `demo_id`'s build and run log lines, published by host `host_id`,
/// the host the demo is placed on. It lies under the host's own subjects
/// (`<prefix>.host.<id>.>`), the only ones its NATS user may publish on.
pub fn log_subject(prefix: &str, host_id: &str, demo_id: &uuid::Uuid) -> String {
    format!("{prefix}.host.{host_id}.demo.{demo_id}.log")
}

/// The host whose subjects (`<prefix>.host.<id>.…`) `subject` is among, and the rest of it.
pub fn host_of<'s>(prefix: &str, subject: &'s str) -> Option<(&'s str, &'s str)> {
    subject.strip_prefix(prefix)?.strip_prefix(".host.")?.split_once('.')
}

/// The host and the demo that the log subject `subject` under `prefix` names, if it is
/// exactly one [`log_subject`] makes.
pub fn read_log_subject<'s>(prefix: &str, subject: &'s str) -> Option<(&'s str, uuid::Uuid)> {
    let (host, rest) = host_of(prefix, subject)?;
    let demo = rest.strip_prefix("demo.")?.strip_suffix(".log")?;
    let demo_id = uuid::Uuid::parse_str(demo).ok()?;
    // Only the form log_subject writes (hyphenated, lowercase), so one demo has one subject.
    (!host.is_empty() && demo_id.to_string() == demo).then_some((host, demo_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_subject_names_its_host_and_demo_and_reads_back() {
        let demo = uuid::Uuid::new_v4();
        let subject = log_subject("demofleet", "host-a", &demo);
        assert_eq!(subject, format!("demofleet.host.host-a.demo.{demo}.log"));
        assert_eq!(read_log_subject("demofleet", &subject), Some(("host-a", demo)));
        // Under another prefix, another form of the id, or not a log subject: none.
        assert_eq!(read_log_subject("other", &subject), None);
        let simple = format!("demofleet.host.host-a.demo.{}.log", demo.simple());
        assert_eq!(read_log_subject("demofleet", &simple), None);
        let upper = format!("demofleet.host.host-a.demo.{}.log", demo.to_string().to_uppercase());
        assert_eq!(read_log_subject("demofleet", &upper), None);
        let rest = format!("demo.{demo}.log");
        assert_eq!(host_of("demofleet", &subject), Some(("host-a", rest.as_str())));
        assert_eq!(host_of("demofleet", "demofleet.host.host-a"), None);
        for bad in ["demofleet.host..demo.x.log", "demofleet.host.host-a.heartbeat", "demofleet.demo.x.log", ""] {
            assert_eq!(read_log_subject("demofleet", bad), None, "{bad}");
        }
    }
}
