# Intake load and its checks, for the intake, replicas and sustained parts. Sourced by
# scripts/bench after lib.sh and demoservice.sh.
#
# Every delivery id is `<run id>-<phase>-<connection>-<counter>` (intake-load): the run id
# (time and process id) differs between runs, the phase between warm-ups and rounds, so no
# id repeats and every delivery is recorded as new. Nothing in the load is random.
RUN_ID=${RUN_ID:-run$(date +%Y%m%d%H%M%S)p$$}
INTAKE_PAYLOAD=$ROOT/tests/data/github/pull_request.synchronize.json
INTAKE_CONNECTIONS=${DEMOFLEET_BENCH_CONNECTIONS:-32}
INTAKE_PRS=${DEMOFLEET_BENCH_PRS:-50}

fail() { echo "BENCH FAILED: $*" >&2; exit 1; }

# intake_load LABEL PORT PHASE SECONDS [intake-load flags…]: signed synchronize deliveries to
# 127.0.0.1:PORT for SECONDS over $INTAKE_CONNECTIONS connections; the summary line goes to
# the log and to $BENCH_DIR/PHASE.txt, the 10 s windows to $BENCH_DIR/PHASE.jsonl, the
# machine's CPU by command just before and after to $BENCH_DIR/PHASE-cpu-{before,after}.json.
intake_load() {
    local label=$1 port=$2 phase=$3 seconds=$4
    shift 4
    cpu_by_command "$BENCH_DIR/$phase-cpu-before.json"
    "$CARGO_TARGET_DIR/release/intake-load" --url "http://127.0.0.1:$port/webhook/github" --secret "$SECRET" \
        --payload "$INTAKE_PAYLOAD" --prs "$INTAKE_PRS" --connections "$INTAKE_CONNECTIONS" \
        --duration "${seconds}s" --delivery-prefix "$RUN_ID-$phase" --label "$label" \
        --windows-out "$BENCH_DIR/$phase.jsonl" "$@" >"$BENCH_DIR/$phase.txt"
    cpu_by_command "$BENCH_DIR/$phase-cpu-after.json"
    cat "$BENCH_DIR/$phase.txt"
}

# cpu_by_command FILE: the CPU ticks (utime + stime) each command name on the machine has
# used so far, as JSON into FILE. A process that ends between two snapshots is not counted,
# except PostgreSQL's (autovacuum workers, a session's backend): those its postmaster has
# reaped count as `postgres_ended` (its children's utime + stime).
cpu_by_command() {
    python3 - "$1" <<'PY'
import collections, glob, json, sys
ticks = collections.Counter()
stats = {}
for path in glob.glob("/proc/[0-9]*/stat"):
    try:
        text = open(path).read()
    except OSError:
        continue
    command, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    stats[path.split("/")[2]] = (command, fields)
    ticks[command] += int(fields[11]) + int(fields[12])
for command, fields in stats.values():
    if command == "postgres" and stats.get(fields[1], ("",))[0] != "postgres":
        ticks["postgres_ended"] += int(fields[13]) + int(fields[14])
json.dump(ticks, open(sys.argv[1], "w"))
PY
}

# cpu_split TARGET PHASE: where the machine's CPU went during PHASE's load, per delivery
# answered 2xx: in all, and for the five commands that used most, as a BENCH line.
cpu_split() {
    python3 - "$BENCH_DIR" "$1" "$2" "$(summary_field "$2" ok)" "$(getconf CLK_TCK)" <<'PY'
import json, sys
bench, target, phase, answered, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
before, after = (json.load(open(f"{bench}/{phase}-cpu-{when}.json")) for when in ("before", "after"))
used = {command: ticks - before.get(command, 0) for command, ticks in after.items()}
total = sum(ticks for ticks in used.values() if ticks > 0)
per = lambda ticks: ticks / hz / max(answered, 1) * 1e6
top = sorted(used.items(), key=lambda item: -item[1])[:5]
print(f"BENCH sustained cpu target={target} us_per_delivery={per(total):.0f} " + " ".join(
    f"{command.replace(' ', '_')}={per(ticks):.0f}us({100 * ticks / max(total, 1):.0f}%)" for command, ticks in top))
PY
}

# summary_field PHASE NAME: NAME=… of PHASE's summary line.
summary_field() { grep -o " $2=[^ ]*" "$BENCH_DIR/$1.txt" | head -1 | cut -d= -f2; }

# demofleet_counters PORT: `<deploy_queued deliveries> <intake events> <intake batches>`
# from /metrics.
demofleet_counters() {
    curl -fsS "http://127.0.0.1:$1/metrics" | awk '
        /^demofleet_webhook_deliveries_total\{/ && /outcome="deploy_queued"/ {q += $2}
        /^demofleet_intake_events_total / {e = $2}
        /^demofleet_intake_batches_total / {b = $2}
        END {printf "%d %d %d\n", q, e, b}'
}

# checked_demofleet_load PORT DB PHASE SECONDS [flags…]: intake_load against demofleet, then
# check that every delivery answered 2xx is recorded, as deploy_queued, in the database and
# in /metrics, and that nothing failed. Fails the benchmark otherwise.
checked_demofleet_load() {
    local port=$1 db=$2 phase=$3 seconds=$4
    shift 4
    local before after
    before=$(demofleet_counters "$port")
    intake_load demofleet "$port" "$phase" "$seconds" "$@"
    after=$(demofleet_counters "$port")
    local ok non2xx errors recorded queued
    ok=$(summary_field "$phase" ok) non2xx=$(summary_field "$phase" non2xx) errors=$(summary_field "$phase" errors)
    read -r recorded queued < <(su postgres -c "psql -d $db -qtA -F ' ' -c \"select count(*), count(*) filter (where outcome = 'deploy_queued')
        from webhook_deliveries where delivery_id like '$RUN_ID-$phase-%'\"")
    local q0 e0 b0 q1 e1 b1
    read -r q0 e0 b0 <<<"$before"
    read -r q1 e1 b1 <<<"$after"
    local metrics_queued=$(( q1 - q0 )) metrics_events=$(( e1 - e0 )) batches=$(( b1 - b0 ))
    echo "BENCH check demofleet phase=$phase answered_2xx=$ok non2xx=$non2xx errors=$errors recorded=$recorded" \
        "deploy_queued=$queued metrics_deploy_queued=$metrics_queued metrics_intake_events=$metrics_events" \
        "intake_batches=$batches events_per_batch=$(awk -v e="$metrics_events" -v b="$batches" 'BEGIN {printf "%.1f", e / (b > 0 ? b : 1)}')"
    [ "$non2xx" = 0 ] && [ "$errors" = 0 ] || fail "$phase: $non2xx answers not 2xx, $errors failed requests"
    [ "$ok" -gt 0 ] || fail "$phase: no delivery answered"
    for seen in "$recorded" "$queued" "$metrics_queued" "$metrics_events"; do
        [ "$seen" = "$ok" ] || fail "$phase: $ok deliveries answered 2xx, but recorded $recorded, deploy_queued $queued" \
            "(database), deploy_queued +$metrics_queued and intake events +$metrics_events (/metrics)"
    done
}

# checked_demoservice_load PORT VHOST PHASE SECONDS [flags…]: intake_load against the
# demoservice stand-in, then check that every delivery answered 2xx put its task into the
# Celery queue (RabbitMQ's count of messages published into it; its statistics lag by
# seconds, so the count is waited for).
checked_demoservice_load() {
    local port=$1 vhost=$2 phase=$3 seconds=$4
    shift 4
    local before published ok non2xx errors
    before=$(demoservice_published "$vhost")
    intake_load demoservice "$port" "$phase" "$seconds" "$@"
    ok=$(summary_field "$phase" ok) non2xx=$(summary_field "$phase" non2xx) errors=$(summary_field "$phase" errors)
    local deadline=$(( $(date +%s) + 30 ))
    while published=$(( $(demoservice_published "$vhost") - before )); [ "$published" != "$ok" ]; do
        (( $(date +%s) < deadline )) || break
        sleep 1
    done
    echo "BENCH check demoservice phase=$phase answered_2xx=$ok non2xx=$non2xx errors=$errors tasks_published=$published"
    [ "$non2xx" = 0 ] && [ "$errors" = 0 ] || fail "$phase: $non2xx answers not 2xx, $errors failed requests"
    [ "$ok" -gt 0 ] || fail "$phase: no delivery answered"
    [ "$published" = "$ok" ] || fail "$phase: $ok deliveries answered 2xx, $published tasks published"
}

# cpu_tree_ticks PID: CPU used so far by PID and its children (gunicorn's workers), in ticks.
cpu_tree_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1"); do total=$(( total + $(cpu_ticks "$pid" 2>/dev/null || echo 0) )); done
    echo $total
}

# intake_rounds: the intake part. Alternating rounds of demoservice and demofleet, each
# checked; medians of each.
intake_rounds() {
    local rounds=${DEMOFLEET_BENCH_INTAKE_ROUNDS:-3} seconds=${DEMOFLEET_BENCH_INTAKE_SECONDS:-$DURATION}
    local ds_port=$((PORT + 5)) ds_vhost=demofleet-bench-demoservice
    start_demoservice $ds_port $ds_vhost "$BENCH_DIR/demoservice.log"
    log "intake: run $RUN_ID, $rounds rounds of ${seconds}s each, demoservice and demofleet alternating"
    checked_demoservice_load $ds_port $ds_vhost warmup-demoservice 3 >/dev/null
    checked_demofleet_load "$PORT" $BENCH_DB warmup-demofleet 3 >/dev/null
    local round target before
    for round in $(seq 1 "$rounds"); do
        for target in demoservice demofleet; do
            if [ $target = demoservice ]; then
                before=$(cpu_tree_ticks "$DEMOSERVICE_PID")
                checked_demoservice_load $ds_port $ds_vhost "round$round-$target" "$seconds"
                echo "cpu_ticks=$(( $(cpu_tree_ticks "$DEMOSERVICE_PID") - before ))" >>"$BENCH_DIR/round$round-$target.txt"
            else
                before=$(cpu_ticks "$MAIN_CONTROLLER")
                checked_demofleet_load "$PORT" $BENCH_DB "round$round-$target" "$seconds"
                echo "cpu_ticks=$(( $(cpu_ticks "$MAIN_CONTROLLER") - before ))" >>"$BENCH_DIR/round$round-$target.txt"
            fi
        done
    done
    python3 - "$BENCH_DIR" "$rounds" "$(getconf CLK_TCK)" <<'PY'
import re, statistics, sys
bench, rounds, hz = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
for target in ("demoservice", "demofleet"):
    rps, p99, cpu = [], [], []
    for r in range(1, rounds + 1):
        text = open(f"{bench}/round{r}-{target}.txt").read()
        fields = dict(re.findall(r"(\w+)=([\d.]+)", text))
        rps.append(float(fields["rps"]))
        p99.append(float(fields["p99_ms"]))
        cpu.append(float(fields["cpu_ticks"]) / hz / float(fields["ok"]) * 1e6)
    print(f"BENCH intake median target={target} rps={statistics.median(rps):.0f} p99_ms={statistics.median(p99):.2f} "
          f"service_cpu_us={statistics.median(cpu):.0f} rounds_rps={','.join(f'{x:.0f}' for x in rps)} "
          f"rounds_p99_ms={','.join(f'{x:.1f}' for x in p99)}")
PY
    stop_demoservice
}
