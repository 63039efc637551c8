//! `/metrics` in Prometheus text format, computed from the state of record at scrape time
//! (so every controller replica reports the same fleet; the history's counts through
//! [`counts`]), plus the broker's queue depths.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use demofleet_common::topology;

use crate::counts;
use crate::error::ApiError;
use crate::state::AppState;
use crate::timings::Snapshot;

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(app): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut out = String::new();
    let deliveries = counts::deliveries(&app.db).await?;
    family(&mut out, "demofleet_webhook_deliveries_total", "counter", "Webhook deliveries by event and outcome.");
    for (event, outcome, n) in deliveries {
        sample(&mut out, "demofleet_webhook_deliveries_total", &[("event", &event), ("outcome", &outcome)], n as f64);
    }

    let attempts = counts::attempts(&app.db).await?;
    family(&mut out, "demofleet_step_attempts_total", "counter", "Step attempts by step and outcome.");
    for (step, outcome, n, _) in &attempts {
        sample(&mut out, "demofleet_step_attempts_total", &[("step", step), ("outcome", outcome)], *n as f64);
    }
    family(&mut out, "demofleet_step_duration_seconds", "summary", "Time spent in step attempts.");
    let steps: std::collections::BTreeSet<&String> = attempts.iter().map(|(s, ..)| s).collect();
    for step in steps {
        let of_step = attempts.iter().filter(|(s, ..)| s == step);
        let (count, sum) = of_step.fold((0, 0.0), |(c, t), (_, _, n, secs)| (c + n, t + secs));
        sample(&mut out, "demofleet_step_duration_seconds_sum", &[("step", step)], sum);
        sample(&mut out, "demofleet_step_duration_seconds_count", &[("step", step)], count as f64);
    }

    let stats = &app.intake.stats;
    let counters = [
        ("demofleet_intake_batches_total", "Batches the webhook intake committed.", &stats.batches, 1.0),
        ("demofleet_intake_events_total", "Events the webhook intake recorded in batches.", &stats.events, 1.0),
        ("demofleet_intake_busy_seconds_total", "Time spent recording intake batches.", &stats.busy_micros, 1e-6),
    ];
    for (name, help, counter, scale) in counters {
        family(&mut out, name, "counter", help);
        sample(&mut out, name, &[], counter.load(std::sync::atomic::Ordering::Relaxed) as f64 * scale);
    }

    let timings = [
        (
            "demofleet_placement_seconds",
            "Time to choose a host for a demo, lock waits included.",
            &app.timings.placement,
        ),
        ("demofleet_heartbeat_seconds", "Time to read and record one agent heartbeat.", &app.timings.heartbeat),
    ];
    for (name, help, histogram) in timings {
        family(&mut out, name, "histogram", help);
        render_histogram(&mut out, name, &histogram.snapshot());
    }

    // Counted by this process: each replica refuses what reaches it.
    let name = "demofleet_channel_refused_total";
    family(&mut out, name, "counter", "Messages refused on the control channel, by what and why.");
    for ((what, reason), n) in app.scheduler.refusals.counts() {
        sample(&mut out, name, &[("what", what), ("reason", reason)], n as f64);
    }

    let demos: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from demos group by state order by 1").fetch_all(&app.db).await?;
    family(&mut out, "demofleet_demos", "gauge", "Demos by state.");
    for (state, n) in demos {
        sample(&mut out, "demofleet_demos", &[("state", &state)], n as f64);
    }

    let timeout = app.config.host_timeout.as_secs_f64();
    let hosts: Vec<(String, bool)> =
        sqlx::query_as("select id, last_seen > now() - make_interval(secs => $1) from hosts order by id")
            .bind(timeout)
            .fetch_all(&app.db)
            .await?;
    family(&mut out, "demofleet_hosts", "gauge", "Hosts by whether their heartbeat is recent.");
    let up = hosts.iter().filter(|(_, alive)| *alive).count();
    sample(&mut out, "demofleet_hosts", &[("status", "up")], up as f64);
    sample(&mut out, "demofleet_hosts", &[("status", "down")], (hosts.len() - up) as f64);

    let outbox: i64 = sqlx::query_scalar("select count(*) from outbox").fetch_one(&app.db).await?;
    family(&mut out, "demofleet_outbox_messages", "gauge", "Messages committed but not yet confirmed by RabbitMQ.");
    sample(&mut out, "demofleet_outbox_messages", &[], outbox as f64);

    family(&mut out, "demofleet_queue_messages", "gauge", "Messages ready in RabbitMQ queues.");
    let mut queues = vec![topology::CONTROLLER_QUEUE.to_string(), topology::DEAD_QUEUE.to_string()];
    queues.extend(hosts.iter().map(|(id, _)| topology::host_queue(id)));
    for queue in queues {
        if let Some(depth) = queue_depth(&app, &queue).await {
            sample(&mut out, "demofleet_queue_messages", &[("queue", &queue)], f64::from(depth));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out))
}

/// Ready messages in `queue`, or `None` when it does not exist or the broker is away. A
/// passive declare of a missing queue closes its channel, so each gets its own.
async fn queue_depth(app: &AppState, queue: &str) -> Option<u32> {
    let channel = app.broker.channel().await.ok()?;
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), passive, FieldTable::default()).await.ok()?;
    let _ = channel.close(200, "done".into()).await;
    Some(declared.message_count())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    let labels = if labels.is_empty() { String::new() } else { format!("{{{}}}", labels.join(",")) };
    let _ = writeln!(out, "{name}{labels} {value}");
}

fn render_histogram(out: &mut String, name: &str, snapshot: &Snapshot) {
    for (bound, count) in &snapshot.buckets {
        let le = if bound.is_infinite() { "+Inf".to_string() } else { bound.to_string() };
        sample(out, &format!("{name}_bucket"), &[("le", &le)], *count as f64);
    }
    sample(out, &format!("{name}_sum"), &[], snapshot.sum_seconds);
    sample(out, &format!("{name}_count"), &[], snapshot.count as f64);
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        super::sample(&mut out, "m", &[("event", "a\"b\\c\nd")], 1.0);
        assert_eq!(out, "m{event=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let histogram = crate::timings::Histogram::default();
        histogram.observe(std::time::Duration::from_micros(300));
        histogram.observe(std::time::Duration::from_millis(3));
        let mut out = String::new();
        super::render_histogram(&mut out, "h", &histogram.snapshot());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "h_bucket{le=\"0.0001\"} 0");
        assert!(lines.contains(&"h_bucket{le=\"0.0005\"} 1"), "{out}");
        assert!(lines.contains(&"h_bucket{le=\"0.005\"} 2"), "{out}");
        assert!(lines.contains(&"h_bucket{le=\"+Inf\"} 2"), "{out}");
        assert_eq!(lines.last(), Some(&"h_count 2"));
        assert!(lines.iter().any(|l| l.starts_with("h_sum 0.0033")), "{out}");
    }
}
