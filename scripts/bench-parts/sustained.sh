# The sustained part, sourced by scripts/bench after intake.sh: intake load for
# DEMOFLEET_BENCH_SUSTAINED_SECONDS against a controller whose database already holds months
# of history (bench-history: DEMOFLEET_BENCH_HISTORY_DEMOS demos, _DELIVERIES deliveries),
# with simulated agents (fleet-sim, adopting the history's running demos) taking the chains,
# then the demoservice stand-in the same way. Throughput and p99 per 10 s window for both;
# the first minute against the last; what was left undone at the end. Then demofleet as
# long again (DEMOFLEET_BENCH_SUSTAINED_RATE_SECONDS) on a schedule at four times the rate
# demoservice sustained (DEMOFLEET_BENCH_SUSTAINED_RATE): its latency per window at that load.
SUSTAINED_SECONDS=${DEMOFLEET_BENCH_SUSTAINED_SECONDS:-600}
HISTORY_DEMOS=${DEMOFLEET_BENCH_HISTORY_DEMOS:-100000}
HISTORY_DELIVERIES=${DEMOFLEET_BENCH_HISTORY_DELIVERIES:-1000000}
HISTORY_MONTHS=${DEMOFLEET_BENCH_HISTORY_MONTHS:-6}
# The controller keeps the whole history (retention a month longer than it spans). With
# the default 30 days it would spend the run removing the five months of deliveries and
# chains the history was made with at once, work an installation in its steady state did
# a little at a time long ago; DEMOFLEET_BENCH_SUSTAINED_RETENTION measures that instead.
SUSTAINED_RETENTION=${DEMOFLEET_BENCH_SUSTAINED_RETENTION:-$(( (HISTORY_MONTHS + 1) * 31 ))d}
SUSTAINED_HOSTS=${DEMOFLEET_BENCH_SUSTAINED_HOSTS:-100}
SUSTAINED_PORT=${DEMOFLEET_BENCH_SUSTAINED_PORT:-8400}
SUSTAINED_DB=demofleet_bench_sustained SUSTAINED_VHOST=demofleet-bench-sustained SUSTAINED_PREFIX=bench-sustained
SUSTAINED_DS_VHOST=demofleet-bench-sustained-demoservice
SUSTAINED_API=http://127.0.0.1:$SUSTAINED_PORT

# The default history takes about 3 GB of PostgreSQL's disk, its making as much WAL again,
# and 10 minutes of intake a few GB more; a full disk stops PostgreSQL for everyone on the
# machine, so the part refuses to start without room (scaled with the history's size).
PG_DATA=$(su postgres -c "psql -qtAc 'show data_directory'")
NEEDED_GB=${DEMOFLEET_BENCH_MIN_FREE_GB:-$(( 10 * HISTORY_DELIVERIES / 1000000 + 2 ))}
FREE_GB=$(df --output=avail -BG "$PG_DATA" | tail -1 | tr -dc 0-9)
(( FREE_GB >= NEEDED_GB )) || fail "sustained: $FREE_GB GB free where PostgreSQL keeps its data ($PG_DATA)," \
    "about $NEEDED_GB GB needed for a history of $HISTORY_DELIVERIES deliveries and the run (DEMOFLEET_BENCH_MIN_FREE_GB overrides)"
log "sustained: a history of $HISTORY_DEMOS demos and $HISTORY_DELIVERIES deliveries over $HISTORY_MONTHS months," \
    "kept for $SUSTAINED_RETENTION ($FREE_GB GB free)"
bench_slice $SUSTAINED_DB $SUSTAINED_VHOST
SUSTAINED_AMQP=amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$SUSTAINED_VHOST
SUSTAINED_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$SUSTAINED_DB
DEMOFLEET_DATABASE_URL=$SUSTAINED_URL DEMOFLEET_AMQP_URL=$SUSTAINED_AMQP DEMOFLEET_WEBHOOK_SECRET=$SECRET \
    "$CARGO_TARGET_DIR/release/demofleet-controller" migrate >/dev/null
"$CARGO_TARGET_DIR/release/bench-history" --database-url "$SUSTAINED_URL" --demos "$HISTORY_DEMOS" \
    --deliveries "$HISTORY_DELIVERIES" --months "$HISTORY_MONTHS" --hosts "$SUSTAINED_HOSTS" --capacity 200 \
    --inventory "$BENCH_DIR/history-inventory.txt" 2>"$BENCH_DIR/history.log"
tail -1 "$BENCH_DIR/history.log"

bench_controller "$BENCH_DIR/sustained-controller.log" $SUSTAINED_DB $SUSTAINED_VHOST $SUSTAINED_PREFIX \
    "$SUSTAINED_PORT" DEMOFLEET_DB_POOL="${DEMOFLEET_DB_POOL:-8}" DEMOFLEET_RETENTION="$SUSTAINED_RETENTION"
SUSTAINED_CONTROLLER=$BENCH_PID
STARTED+=($SUSTAINED_CONTROLLER)
wait_for "the sustained controller" 120 curl -fsS "$SUSTAINED_API/readyz"
bench_enrol $SUSTAINED_DB $SUSTAINED_VHOST $SUSTAINED_PREFIX $(seq -f 'sim-%03g' 1 "$SUSTAINED_HOSTS")
DEMOFLEET_LOG=warn "$CARGO_TARGET_DIR/release/fleet-sim" --agents "$SUSTAINED_HOSTS" --capacity 200 \
    --heartbeat-interval 5s --amqp-url "$SUSTAINED_AMQP" --nats-url "$DEMOFLEET_NATS_URL" \
    --nats-prefix $SUSTAINED_PREFIX --inventory "$BENCH_DIR/history-inventory.txt" >"$BENCH_DIR/sustained-sim.log" 2>&1 &
SUSTAINED_SIM=$!
STARTED+=($SUSTAINED_SIM)
api_token $SUSTAINED_DB "$BENCH_DIR/sustained-api-token"
sustained_live_hosts() {
    curl -fsS -H "Authorization: Bearer $(cat "$BENCH_DIR/sustained-api-token")" "$SUSTAINED_API/api/hosts" |
        python3 -c 'import json, sys; print(sum(h["alive"] for h in json.load(sys.stdin)))'
}
sustained_hosts_live() { [ "$(sustained_live_hosts)" = "$SUSTAINED_HOSTS" ]; }
wait_for "$SUSTAINED_HOSTS live simulated hosts" 60 sustained_hosts_live

# sustained_backlog LABEL: what the controller had not done yet, as a BENCH line: chains
# waiting or running, generations recorded but not begun (no chain yet), messages unsent or
# unconsumed.
sustained_backlog() {
    local counts queued
    counts=$(su postgres -c "psql -d $SUSTAINED_DB -qtA -F ' ' -c \"select
        (select count(*) from chains where status = 'waiting'), (select count(*) from chains where status = 'running'),
        (select count(*) from demos d where d.state = 'pending' and d.desired = 'running'
           and not exists (select 1 from chains c where c.demo_id = d.id and c.generation = d.generation)),
        (select count(*) from outbox), (select count(*) from webhook_deliveries), (select count(*) from chains),
        (select coalesce(sum(counted), 0) from webhook_delivery_counts)
            + (select count(*) from webhook_deliveries, count_marks m
               where m.counted = 'webhook_deliveries' and received_at >= m.until)
            - (select count(*) from webhook_deliveries),
        pg_size_pretty(pg_database_size(current_database()))\"")
    queued=$(curl -fsS "$SUSTAINED_API/metrics" | awk '/^demofleet_queue_messages\{/ {n += $2} END {print n + 0}')
    read -r waiting running not_begun outbox deliveries chains pruned size <<<"$counts"
    echo "BENCH sustained backlog $1: chains_waiting=$waiting chains_running=$running" \
        "generations_not_begun=$not_begun outbox=$outbox" \
        "queued_messages=$queued deliveries=$deliveries chains=$chains deliveries_pruned=$pruned database=${size// /}"
}
# sustained_scrape LABEL: how long one /metrics scrape takes on this history, and, beside it,
# PostgreSQL's time for the counts as scrapes read them before tallies (every kept delivery
# and step attempt), as a BENCH line.
sustained_scrape() {
    local scrape every
    scrape=$(curl -fsS -o /dev/null -w '%{time_total}' "$SUSTAINED_API/metrics")
    every=$(su postgres -c "psql -d $SUSTAINED_DB -qtA" <<'SQL' | awk '/^Time:/ {ms += $2} END {printf "%.3f", ms / 1000}'
\timing on
select count(*) from (select event, outcome, count(*) from webhook_deliveries group by 1, 2) as counts;
select count(*) from (select s.name, a.outcome, count(*), sum(a.duration_ms) from step_attempts a
    join chain_steps s on s.chain_id = a.chain_id and s.position = a.position group by 1, 2) as counts;
SQL
)
    echo "BENCH sustained metrics_scrape $1: scrape=${scrape}s counting_every_row=${every}s"
}
# sustained_vacuums FILE: each table's autovacuum and autoanalyze runs so far, into FILE.
sustained_vacuums() {
    su postgres -c "psql -d $SUSTAINED_DB -qtA -F ' ' -c 'select relname, autovacuum_count, autoanalyze_count
        from pg_stat_user_tables order by 1'" >"$1"
}
# sustained_wal FILE: the cluster's WAL written and checkpoints so far, into FILE (one line:
# records, full-page images, bytes, timed and requested checkpoints, buffers they wrote).
sustained_wal() {
    su postgres -c "psql -qtA -F ' ' -c 'select w.wal_records, w.wal_fpi, w.wal_bytes, b.checkpoints_timed,
        b.checkpoints_req, b.buffers_checkpoint from pg_stat_wal w, pg_stat_bgwriter b'" >"$1"
}
# sustained_wal_report PHASE: WAL per delivery and checkpoints between PHASE's two readings.
sustained_wal_report() {
    python3 - "$BENCH_DIR" "$1" "$(summary_field "$1" ok)" <<'PY'
import sys
bench, phase, answered = sys.argv[1], sys.argv[2], max(int(sys.argv[3]), 1)
before, after = ([float(x) for x in open(f"{bench}/{phase}-wal-{when}.txt").read().split()] for when in ("before", "after"))
records, fpi, size, timed, requested, written = (a - b for a, b in zip(after, before))
print(f"BENCH sustained wal phase={phase} records_per_delivery={records / answered:.1f} "
      f"fpi_per_delivery={fpi / answered:.2f} bytes_per_delivery={size / answered:.0f} "
      f"checkpoints_timed={timed:.0f} checkpoints_requested={requested:.0f} checkpoint_buffers={written:.0f}")
PY
}
# sustained_chains PHASE SINCE: the chains made since SINCE (epoch seconds), those
# written superseded, those with a step sent to a simulated agent (a step queued), and those
# it ran (a step attempt recorded), each also per delivery of PHASE answered, as a BENCH line.
sustained_chains() {
    local answered counts made superseded sent ran
    answered=$(summary_field "$1" ok)
    counts=$(su postgres -c "psql -d $SUSTAINED_DB -qtA -F ' ' -c \"select count(*),
        count(*) filter (where status = 'superseded'),
        count(*) filter (where exists (select 1 from chain_steps s where s.chain_id = c.id)),
        count(*) filter (where exists (select 1 from step_attempts a where a.chain_id = c.id))
        from chains c where created_at >= to_timestamp($2)\"")
    read -r made superseded sent ran <<<"$counts"
    echo "BENCH sustained chains phase=$1: made=$made superseded=$superseded sent=$sent ran=$ran" \
        "$(awk -v m="$made" -v s="$superseded" -v q="$sent" -v r="$ran" -v a="$answered" 'BEGIN {
            a = a > 0 ? a : 1
            printf "per_delivery: made=%.3f superseded=%.3f sent=%.3f ran=%.3f", m / a, s / a, q / a, r / a }')"
}
# sustained_rabbitmq FILE: the sustained vhost's message counts so far (the management API's
# message_stats: published, delivered or got, acknowledged, redelivered) and RabbitMQ's
# connections, channels and queues, into FILE as one line.
sustained_rabbitmq() {
    curl -fsS -u "$AMQP_USER:$AMQP_PASSWORD" "http://127.0.0.1:15672/api/vhosts/$SUSTAINED_VHOST" |
        python3 -c 'import json, sys
v = json.load(sys.stdin); m = v.get("message_stats", {})
print(*(m.get(k, 0) for k in ("publish", "deliver_get", "ack", "redeliver")))' >"$1"
    curl -fsS -u "$AMQP_USER:$AMQP_PASSWORD" "http://127.0.0.1:15672/api/overview" |
        python3 -c 'import json, sys
t = json.load(sys.stdin)["object_totals"]; print(t["connections"], t["channels"], t["queues"])' >>"$1"
}
# sustained_rabbitmq_report PHASE: RabbitMQ's messages per delivery of PHASE, as a BENCH line.
sustained_rabbitmq_report() {
    python3 - "$BENCH_DIR" "$1" "$(summary_field "$1" ok)" <<'PY'
import sys
bench, phase, answered = sys.argv[1], sys.argv[2], max(int(sys.argv[3]), 1)
(before, _), (after, totals) = ([line.split() for line in open(f"{bench}/{phase}-rabbitmq-{when}.txt")]
                                for when in ("before", "after"))
counts = dict(zip(("published", "delivered", "acked", "redelivered"), (int(a) - int(b) for a, b in zip(after, before))))
print(f"BENCH sustained rabbitmq phase={phase} " + " ".join(f"{k}={v}" for k, v in counts.items())
      + " per_delivery: " + " ".join(f"{k}={v / answered:.3f}" for k, v in counts.items())
      + " connections={} channels={} queues={}".format(*totals))
PY
}
# sustained_idle_cpu SECONDS: the CPU each program uses in SECONDS with no load (the simulated
# agents' heartbeats, the controller's tick, RabbitMQ's and PostgreSQL's own work), in ms a
# second, as a BENCH line: what the loaded phases pay whatever their deliveries.
sustained_idle_cpu() {
    cpu_by_command "$BENCH_DIR/sustained-idle-cpu-before.json"
    sleep "$1"
    cpu_by_command "$BENCH_DIR/sustained-idle-cpu-after.json"
    python3 - "$BENCH_DIR" "$1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
bench, seconds, hz = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
before, after = (json.load(open(f"{bench}/sustained-idle-cpu-{when}.json")) for when in ("before", "after"))
used = sorted(((c, t - before.get(c, 0)) for c, t in after.items()), key=lambda item: -item[1])[:5]
print("BENCH sustained idle_cpu ms_per_s: " + " ".join(f"{c.replace(' ', '_')}={t / hz / seconds * 1000:.1f}" for c, t in used))
PY
}
# PostgreSQL's log, read for the timeline.
PG_LOG=${DEMOFLEET_PG_LOG:-/var/log/postgresql/postgresql-15-main.log}
# sustained_timeline PHASE FROM TO OFFSET: autovacuums, autoanalyzes and checkpoints PostgreSQL
# logged between FROM and TO (epoch seconds, the phase's load), each at its second into the
# load, and the windows whose p99 was over twice the phase's median, as BENCH lines. The log is
# read from byte OFFSET, its size when the load began (from its start if it has been rotated
# since), and a vacuum that began in the load may have ended up to a minute after it.
sustained_timeline() {
    python3 - "$BENCH_DIR" "$1" "$2" "$3" "$PG_LOG" "$4" <<'PY'
import datetime, json, os, re, statistics, sys
bench, phase, began, ended, log = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
offset = int(sys.argv[6]) if int(sys.argv[6]) <= os.path.getsize(log) else 0
stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (\w+) ")
what = re.compile(r"automatic (vacuum|analyze) of table \"([^\"]+)\".*?|checkpoint (starting|complete)")
# A log entry's first line carries its time; its continuation lines start with a tab. An
# autovacuum's or autoanalyze's entry is written when it ends, its elapsed time on a later line.
entries = []
raw = open(log, "rb")
raw.seek(offset)
for line in (l.decode(errors="replace") for l in raw):
    m = stamp.match(line)
    if m:
        entries.append([datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
                        .replace(tzinfo=datetime.timezone.utc).timestamp(), line])
    elif entries and line.startswith("\t"):
        entries[-1][1] += line
events = []
for at, text in entries:
    w = what.search(text)
    if not w or not began <= at <= ended + 60:
        continue
    elapsed = re.search(r"elapsed: ([\d.]+) s|total=([\d.]+) s", text)
    took = float(next(g for g in elapsed.groups() if g)) if elapsed else 0.0
    if at - took > ended:
        continue
    label = f"{w.group(1)}:{w.group(2).split('.')[-1]}" if w.group(1) else f"checkpoint_{w.group(3)}"
    events.append(f"{label}@{at - took - began:.0f}s" + (f"-{at - began:.0f}s" if took >= 1 else ""))
print(f"BENCH sustained timeline phase={phase} postgres: " + (" ".join(events) or "none"))
windows = [json.loads(l) for l in open(f"{bench}/{phase}.jsonl")]
median = statistics.median(w["p99_ms"] for w in windows)
slow = [f"{w['t_s']:.0f}s={w['p99_ms']:.0f}ms" for w in windows if w["p99_ms"] > 2 * median]
print(f"BENCH sustained timeline phase={phase} windows_p99_over_twice_median({median:.1f}ms): " + (" ".join(slow) or "none"))
PY
}
sustained_backlog before
sustained_scrape before
echo "BENCH sustained load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# The demoservice stand-in first, then stopped, so the two never share the machine.
start_demoservice $((SUSTAINED_PORT + 5)) $SUSTAINED_DS_VHOST "$BENCH_DIR/sustained-demoservice.log"
log "sustained: demoservice for ${SUSTAINED_SECONDS}s"
checked_demoservice_load $((SUSTAINED_PORT + 5)) $SUSTAINED_DS_VHOST sustained-warmup-demoservice 5 >/dev/null
checked_demoservice_load $((SUSTAINED_PORT + 5)) $SUSTAINED_DS_VHOST sustained-demoservice "$SUSTAINED_SECONDS"
cpu_split demoservice sustained-demoservice
echo "BENCH sustained demoservice tasks still queued: $(demoservice_queued $SUSTAINED_DS_VHOST)"
stop_demoservice

# Where PostgreSQL's time goes in the demofleet phase, by statement, when the cluster loads
# pg_stat_statements (shared_preload_libraries; scripts/bench does not restart PostgreSQL
# to load it): the phase's statements in $BENCH_DIR/sustained-statements.txt.
sustained_statements() {
    su postgres -c "psql -d $SUSTAINED_DB -qtAc 'show shared_preload_libraries'" | grep -q pg_stat_statements || return 0
    if [ "$1" = reset ]; then
        su postgres -c "psql -d $SUSTAINED_DB -qc 'create extension if not exists pg_stat_statements' -c 'select pg_stat_statements_reset()'" >/dev/null
        return
    fi
    # With pg_stat_statements.track_planning, a statement planned and never run has calls = 0.
    su postgres -c "psql -d $SUSTAINED_DB -c \"select calls, round(total_exec_time::numeric / 1000, 1) as seconds,
        round((total_exec_time / calls)::numeric * 1000) as us_per_call, round((total_plan_time / calls)::numeric * 1000) as plan_us_per_call,
        round(wal_records::numeric / calls) as wal_per_call,
        round(100 * total_exec_time / sum(total_exec_time) over ())::int as pct, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) as statement
        from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database()) and calls > 0
        order by total_exec_time desc limit 15\"" >"$BENCH_DIR/sustained-statements.txt"
    log "sustained: PostgreSQL's time by statement in $BENCH_DIR/sustained-statements.txt"
}

log "sustained: demofleet for ${SUSTAINED_SECONDS}s against the history, $SUSTAINED_HOSTS simulated agents"
sustained_idle_cpu 20
# Every autovacuum and autoanalyze of the history's tables is logged, for the timeline.
su postgres -c "psql -d $SUSTAINED_DB -qtA" <<'SQL' >/dev/null
select format('alter table %I set (log_autovacuum_min_duration = 0)', relname) from pg_stat_user_tables \gexec
SQL
checked_demofleet_load "$SUSTAINED_PORT" $SUSTAINED_DB sustained-warmup-demofleet 5 >/dev/null
sustained_statements reset
sustained_vacuums "$BENCH_DIR/sustained-vacuums-before.txt"
sustained_wal "$BENCH_DIR/sustained-demofleet-wal-before.txt"
sustained_rabbitmq "$BENCH_DIR/sustained-demofleet-rabbitmq-before.txt"
log_offset=$(stat -c %s "$PG_LOG")
load_began=$(date +%s.%N)
checked_demofleet_load "$SUSTAINED_PORT" $SUSTAINED_DB sustained-demofleet "$SUSTAINED_SECONDS"
load_ended=$(date +%s.%N)
sustained_wal "$BENCH_DIR/sustained-demofleet-wal-after.txt"
sustained_rabbitmq "$BENCH_DIR/sustained-demofleet-rabbitmq-after.txt"
cpu_split demofleet sustained-demofleet
sustained_wal_report sustained-demofleet
sustained_rabbitmq_report sustained-demofleet
sustained_chains sustained-demofleet "$load_began"
sustained_timeline sustained-demofleet "$load_began" "$load_ended" "$log_offset"
sustained_vacuums "$BENCH_DIR/sustained-vacuums-after.txt"
# Which tables autovacuum worked on during the demofleet phase (its CPU: postgres_ended above).
echo "BENCH sustained autovacuum: $(join <(sort "$BENCH_DIR/sustained-vacuums-before.txt") <(sort "$BENCH_DIR/sustained-vacuums-after.txt") |
    awk '$4 > $2 || $5 > $3 {printf "%s=%d/%d ", $1, $4 - $2, $5 - $3}')(vacuums/analyzes)"
sustained_statements report

# Then demofleet on a schedule (open loop, as GitHub sends: its deliveries do not wait for
# our answers) at four times the rate demoservice sustained above, on the history the load
# above has grown: how fast demofleet answers at the load the goal names. The closed loop
# above measures how much it takes; its latency there is mostly its own queue (32
# connections always waiting: the mean latency is 32 over its throughput). Here each
# delivery's latency counts from when it was due, so a stall counts for every delivery it
# held back.
SUSTAINED_RATE=${DEMOFLEET_BENCH_SUSTAINED_RATE:-$(awk -v r="$(summary_field sustained-demoservice rps)" 'BEGIN {printf "%.0f", 4 * r}')}
SUSTAINED_RATE_SECONDS=${DEMOFLEET_BENCH_SUSTAINED_RATE_SECONDS:-$SUSTAINED_SECONDS}
log "sustained: demofleet for ${SUSTAINED_RATE_SECONDS}s at $SUSTAINED_RATE deliveries a second (open loop)"
echo "BENCH sustained at_rate rate=$SUSTAINED_RATE seconds=$SUSTAINED_RATE_SECONDS"
log_offset=$(stat -c %s "$PG_LOG")
load_began=$(date +%s.%N)
checked_demofleet_load "$SUSTAINED_PORT" $SUSTAINED_DB sustained-demofleet-at-rate "$SUSTAINED_RATE_SECONDS" --rate "$SUSTAINED_RATE" \
    --slow-out "$BENCH_DIR/sustained-demofleet-at-rate-slow.txt"
load_ended=$(date +%s.%N)
cpu_split demofleet-at-rate sustained-demofleet-at-rate
sustained_timeline sustained-demofleet-at-rate "$load_began" "$load_ended" "$log_offset"
sustained_backlog after
sustained_scrape after
echo "BENCH sustained controller_rss_mb=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$SUSTAINED_CONTROLLER/status")"
python3 - "$BENCH_DIR" "$SUSTAINED_SECONDS" "$SUSTAINED_RATE_SECONDS" <<'PY'
import json, sys
bench = sys.argv[1]
means = {}
for target, seconds in (("demoservice", float(sys.argv[2])), ("demofleet", float(sys.argv[2])),
                        ("demofleet-at-rate", float(sys.argv[3]))):
    # The first and last minute (a third of the run when it is shorter than three minutes,
    # but at least one 10 s window).
    span = max(10.0, min(60.0, seconds / 3))
    windows = [json.loads(l) for l in open(f"{bench}/sustained-{target}.jsonl")]
    first = [w for w in windows if w["t_s"] <= span + 1e-6]
    last = [w for w in windows if w["t_s"] > seconds - span + 1e-6]
    mean = lambda ws: sum(w["rps"] for w in ws) / max(len(ws), 1)
    means[target] = mean(windows)
    print(f"BENCH sustained target={target} seconds={seconds:.0f} windows={len(windows)} rps={mean(windows):.0f} "
          f"first_rps={mean(first):.0f} last_rps={mean(last):.0f} last_vs_first={mean(last) / max(mean(first), 1e-9):.3f} "
          f"min_window_rps={min(w['rps'] for w in windows):.0f} worst_p99_ms={max(w['p99_ms'] for w in windows):.2f} "
          f"windows_p99_at_least_15ms={sum(w['p99_ms'] >= 15 for w in windows)} span_s={span:.0f}")
print(f"BENCH sustained demofleet_vs_demoservice={means['demofleet'] / max(means['demoservice'], 1e-9):.2f}")
PY
kill "$SUSTAINED_SIM" "$SUSTAINED_CONTROLLER" 2>/dev/null || true
wait "$SUSTAINED_SIM" "$SUSTAINED_CONTROLLER" 2>/dev/null || true
# Its gigabytes are not kept (DEMOFLEET_BENCH_KEEP_HISTORY=1 keeps them, to look at).
[ "${DEMOFLEET_BENCH_KEEP_HISTORY:-0}" = 1 ] || su postgres -c "psql -qc 'drop database $SUSTAINED_DB with (force)'"
