# The compose mode of scripts/bench-e2e (`--compose`), sourced by it once its controller
# and agent run and its helpers are defined: webhook → first 200 of the page that reads
# the database, for the two-service example examples/compose-notes (web: busybox's
# httpd and a CGI script running psql, FROM demofleet/postgres:15; db: PostgreSQL as user
# postgres, its data in a named volume; a seed run once), against Debian's docker-compose.
# Rounds alternate, each a new commit (a front page of its own; the seeded row names the
# commit) and, for demofleet, a new pull request:
#   baseline   `git clone` + `docker-compose up -d --build` (db first, web once db is
#              healthy) + `docker-compose run --rm web sh -c <seed>` + curl every 10 ms on
#              web's published port until /cgi-bin/notes shows the round's seeded row;
#   demofleet  a signed `opened` delivery, then the same curl through the edge
#              (`Host: <name>.localhost`); the agent seeds once db is healthy, before web
#              starts, in web's image and environment.
# Both run the same files: the compose file publishes web on 127.0.0.1 (demofleet reads only
# the container's side of `ports`) and gives the database's password to both services in
# `environment`, not as repository secrets (no keys to set up; the secrets' path is not
# timed). After every round each side removes all it made (containers, volumes, networks,
# images; demofleet: the pull request closed) and the round checks that nothing is left.
# Warm for both: the local images and Docker's build cache of the fixture's layers, which
# one untimed warm-up round of each side fills and tags keep until the end (db's image
# whole, web's up to `COPY www`; each side its own, as the docker CLI and the agent pack the
# build context differently); every round prints how many build steps the cache gave.
# Cold for both every round: web's layers from `COPY www` on, the clone, the database
# (initdb into a new volume), the seed.
# Timeline: `docker events` (start, die, health_status) recorded for the whole run give each
# round's db start, db healthy, seed and web start, in ms after the round's start.

POSTGRES_IMAGE=demofleet/postgres:15
# Tags that keep the warm-up rounds' images (and so their layers in the build cache).
WARM=demofleet-bench-compose-warm
log "images: $POSTGRES_IMAGE (scripts/images --only-postgres), docker-compose"
"$ROOT/scripts/images" --only-postgres

# The fixture: examples/compose-notes (as tests/tests/compose_mode.rs runs it), with web
# published on 127.0.0.1 for the baseline and the database's password in the compose file
# instead of repository secrets. The seed is the example's: the table and one row naming
# the commit.
PASSWORD=bench-$RANDOM$RANDOM
cp -a "$ROOT/examples/compose-notes/." "$WORK/"
SEED=$(sed -n "s/^command = '''\(.*\)'''\$/\1/p" "$WORK/.demofleet.toml")
[ -n "$SEED" ] || { echo "no seed command in examples/compose-notes/.demofleet.toml" >&2; exit 1; }
sed -i -e 's|ports: \["8080"\]|ports: ["127.0.0.1::8080"]|' \
    -e "s|^\(      PGDATABASE: demo\)\$|\1\n      PGPASSWORD: $PASSWORD|" \
    -e "s|^\(    build: ./db\)\$|\1\n    environment:\n      POSTGRES_PASSWORD: $PASSWORD|" "$WORK/compose.yaml"
grep -q '127.0.0.1::8080' "$WORK/compose.yaml" && [ "$(grep -c "$PASSWORD" "$WORK/compose.yaml")" = 2 ] ||
    { echo "examples/compose-notes/compose.yaml is not shaped as this benchmark edits it" >&2; exit 1; }
sed -i "s|demofleet/base:busybox|$BASE_IMAGE|" "$WORK/web/Dockerfile"
# commit MARKER: a commit whose front page shows MARKER, pushed; prints its id.
commit() {
    echo "<!doctype html><title>notes</title><h1>$1</h1>" >"$WORK/web/www/index.html"
    push "$1"
}

# Every container start, exit and health change on the engine, for the rounds' timelines.
docker events --filter type=container --filter event=start --filter event=die --filter event=health_status \
    --format '{{.TimeNano}} {{.Action}} {{index .Actor.Attributes "name"}}' >"$BENCH_DIR/events.txt" &
STARTED+=($!)

# baseline_compose PROJECT ARGS...: Debian's docker-compose on the clone of the baseline's
# project PROJECT.
baseline_compose() {
    local project=$1
    shift
    (cd "$BENCH_DIR/baseline/$project" && docker-compose --project-name "$project" --file compose.yaml --ansi never "$@")
}

# The baseline's projects, each to be taken down at the end if a round failed halfway; the
# warm-up rounds' images.
part_cleanup() {
    local dir
    for dir in "$BENCH_DIR"/baseline/*/; do
        [ -f "$dir/compose.yaml" ] && baseline_compose "$(basename "$dir")" down --volumes --rmi local \
            --remove-orphans --timeout 1 >/dev/null 2>&1
    done
    docker images --format '{{.Repository}}:{{.Tag}}' "$WARM" | xargs -r docker rmi >/dev/null 2>&1
    return 0
}

# timeline T0 DB WEB SEED: when the containers named DB and WEB first started after T0 (an
# epoch time), DB first reported healthy and the container SEED (a regular expression)
# started and exited, in ms after T0, from the recorded events.
timeline() {
    python3 - "$BENCH_DIR/events.txt" "$@" <<'PY'
import re, sys
path, t0, db, web, seed = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], re.compile(sys.argv[5])
first = {}
for line in open(path):
    fields = line.split()
    at, action, name = int(fields[0]) / 1e9, " ".join(fields[1:-1]), fields[-1]
    if at < t0:
        continue
    key = {(db, "start"): "db_up_at", (db, "health_status: healthy"): "db_healthy_at", (web, "start"): "web_up_at"}.get((name, action))
    if key is None and seed.fullmatch(name) and action in ("start", "die"):
        key = "seed_start_at" if action == "start" else "seed_end_at"
    if key:
        first.setdefault(key, round(1000 * (at - t0)))
print(" ".join(f"{k}={first.get(k, 'none')}" for k in ("db_up_at", "db_healthy_at", "seed_start_at", "seed_end_at", "web_up_at")))
PY
}

# build_steps IMAGE: CACHED/STEPS: STEPS the layers IMAGE's build added on top of
# $POSTGRES_IMAGE (the classic builder commits one for each step), CACHED those of them a
# warm-up image holds too (the build cache gave them).
build_steps() {
    local own warm
    own=$(docker history -q "$1" | grep -vx '<missing>' | grep -vxF -f <(docker history -q "$POSTGRES_IMAGE") || true)
    warm=$(docker images --format '{{.Repository}}:{{.Tag}}' "$WARM" | xargs -r -n1 docker history -q)
    echo "$(comm -12 <(sort -u <<<"$own") <(sort -u <<<"$warm") | grep -c . || true)/$(grep -c . <<<"$own" || true)"
}

# check_page URL HOST EXPECTED: URL (through the edge when HOST is given) answers exactly
# EXPECTED, or the round fails.
check_page() {
    local page header=()
    [ -n "$2" ] && header=(-H "Host: $2")
    page=$(curl -fsS --max-time 5 "${header[@]}" "$1")
    [ "$page" = "$3" ] || { echo "$1 answered \"$page\", not \"$3\"" >&2; return 1; }
}

# compose_baseline_round I SHA MARKER: one baseline round as project benchcompose-bI at the
# pushed commit SHA; prints total and stage times in ms, then the epoch time it started.
compose_baseline_round() {
    local i=$1 sha=$2 project=benchcompose-b$1 dir t0 t1 t2 t3 t4 port
    dir=$BENCH_DIR/baseline/$project
    t0=$(now)
    git clone -q "file://$BARE" "$dir"
    t1=$(now)
    baseline_compose "$project" up -d --build >"$dir.up.log" 2>&1 || { cat "$dir.up.log" >&2; return 1; }
    t2=$(now)
    baseline_compose "$project" run --rm -T -e DEMO_SHA="$sha" web sh -c "$SEED" >"$dir.seed.log" 2>&1 ||
        { cat "$dir.seed.log" >&2; return 1; }
    # The published port as the engine has it (`docker-compose port` would start Python once more).
    port=$(docker port "${project}_web_1" 8080/tcp | head -1 | cut -d: -f2)
    t3=$(now)
    until_serves "http://127.0.0.1:$port/cgi-bin/notes" "seeded $sha"
    t4=$(now)
    python3 -c "t0, t1, t2, t3, t4 = $t0, $t1, $t2, $t3, $t4
print(round(1000 * (t4 - t0)), 'clone=%d up=%d seed=%d wait=%d' % tuple(round(1000 * d) for d in (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))"
    # Untimed: the page holds exactly the seeded row, the front page is this round's.
    check_page "http://127.0.0.1:$port/cgi-bin/notes" "" "seeded $sha"
    check_page "http://127.0.0.1:$port/" "" "<!doctype html><title>notes</title><h1>$3</h1>"
    echo "$t0"
}

# mounted_volumes FILTER: the volumes the containers that `docker ps` FILTER lists mount,
# anonymous ones (an image's VOLUME) too.
mounted_volumes() {
    docker ps -aq --filter "$1" |
        xargs -r docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}'
}

# existing VOLUME...: those of the volumes that still exist.
existing() {
    local volume
    for volume in "$@"; do docker volume inspect "$volume" >/dev/null 2>&1 && echo "$volume"; done
    return 0
}

# compose_baseline_down I: take project benchcompose-bI down (its containers, volumes,
# network and images) and check that the engine holds nothing of it.
compose_baseline_down() {
    local project=benchcompose-b$1 volumes left
    volumes=$(mounted_volumes "label=com.docker.compose.project=$project")
    baseline_compose "$project" down --volumes --rmi local --remove-orphans --timeout 1 >/dev/null 2>&1
    left=$(for kind in "ps -a" "volume ls" "network ls"; do
        docker $kind -q --filter "label=com.docker.compose.project=$project"
    done; docker images -q "${project}_*"; existing $volumes)
    [ -z "$left" ] || { echo "baseline project $project left: $left" >&2; return 1; }
}

# compose_demofleet_round PR SHA MARKER: one demofleet round, pull request PR opened at the
# pushed commit SHA; prints total and stage times in ms, then the epoch time it started.
compose_demofleet_round() {
    local i=$1 sha=$2 name=$REPO-$OWNER-pr-$1 t0 result
    t0=$(now)
    result=$(demofleet_round "$i" "seeded $sha" "$sha" /cgi-bin/notes)
    check_page "http://$EDGE/cgi-bin/notes" "$name.localhost" "seeded $sha"
    check_page "http://$EDGE/" "$name.localhost" "<!doctype html><title>notes</title><h1>$3</h1>"
    echo "$result"
    echo "$t0"
}

# demo_gone NAME ID VOLUME...: demo NAME (id ID) is stopped and the engine holds none of
# its containers, volumes (VOLUMEs: those its containers mounted), networks or images.
demo_gone() {
    [ "$(sql "select state from demos where id = '$2'")" = stopped ] || return 1
    [ -z "$(for kind in "ps -a" "volume ls" "network ls"; do docker $kind -q --filter "label=run.demo.id=$2"; done
            docker network ls -q --filter "name=demofleet-$1"
            docker images -q "demofleet/$1"
            existing "${@:3}")" ]
}

# compose_demofleet_down PR SHA: close pull request PR; returns once the demo and all it
# made are gone.
compose_demofleet_down() {
    local name=$REPO-$OWNER-pr-$1 id volumes
    id=$(sql "select id from demos where name = '$name'")
    volumes=$(mounted_volumes "label=run.demo.id=$id")
    deliver closed "$1" "$2" "$NAME-closed-$1"
    wait_for "demo $name and everything it made to go" 120 demo_gone "$name" "$id" $volumes
}

# demofleet_images PR: the tags of the images of pull request PR's demo, db's then web's.
demofleet_images() {
    local tags
    tags=$(docker images --format '{{.Repository}}:{{.Tag}}' "demofleet/$REPO-$OWNER-pr-$1")
    grep '\.db$' <<<"$tags"
    grep '\.web$' <<<"$tags"
}

# baseline ROUND PR: a baseline round (ROUND 0: the warm-up, whose images are then kept
# under $WARM tags), printed as a BENCH line and, unless the warm-up, added to rounds.txt.
baseline() {
    local round=$1 i=$2 marker sha result total stages t0 project=benchcompose-b$2
    marker="baseline round $round $RANDOM"
    sha=$(commit "$marker")
    result=$(compose_baseline_round "$i" "$sha" "$marker")
    read -r total stages <<<"$(head -1 <<<"$result")"
    t0=$(tail -1 <<<"$result")
    stages+=" cached=db:$(build_steps "${project}_db"),web:$(build_steps "${project}_web")"
    if [ "$round" = 0 ]; then
        docker tag "${project}_db" "$WARM:baseline-db" && docker tag "${project}_web" "$WARM:baseline-web"
    fi
    compose_baseline_down "$i"
    stages+=" $(timeline "$t0" "${project}_db_1" "${project}_web_1" "${project}_web_run_.*")"
    report "$round" baseline "$total" "$stages"
}

# demofleet ROUND PR: the same for demofleet, with pull request PR.
demofleet() {
    local round=$1 i=$2 marker sha result total stages t0 images name=$REPO-$OWNER-pr-$2
    marker="demofleet round $round $RANDOM"
    sha=$(commit "$marker")
    result=$(compose_demofleet_round "$i" "$sha" "$marker")
    read -r total stages <<<"$(head -1 <<<"$result")"
    t0=$(tail -1 <<<"$result")
    mapfile -t images < <(demofleet_images "$i")
    ((${#images[@]} == 2)) || { echo "demo $name has images ${images[*]}, not one for each service" >&2; exit 1; }
    stages+=" cached=db:$(build_steps "${images[0]}"),web:$(build_steps "${images[1]}")"
    if [ "$round" = 0 ]; then
        docker tag "${images[0]}" "$WARM:demofleet-db" && docker tag "${images[1]}" "$WARM:demofleet-web"
    fi
    compose_demofleet_down "$i" "$sha"
    stages+=" $(timeline "$t0" "demofleet-$name--db" "demofleet-$name-g1" "demofleet-$name-g1--seed")"
    report "$round" demofleet "$total" "$stages"
}

# report ROUND KIND TOTAL STAGES: the round's BENCH line; kept for the medians unless the warm-up.
report() {
    if [ "$1" = 0 ]; then
        echo "BENCH compose warmup kind=$2 total_ms=$3 $4"
    else
        echo "BENCH compose round=$1 kind=$2 total_ms=$3 $4" | tee -a "$BENCH_DIR/rounds.txt"
    fi
}

echo "BENCH compose caches: warm for both sides: $POSTGRES_IMAGE, $BASE_IMAGE and Docker's build cache of the" \
    "fixture's layers from one untimed warm-up round of each side, kept by tags (db's image whole, web's up to" \
    "COPY www; each side its own layers; cached=SERVICE:FROM_CACHE/STEPS below); cold for both every round: web's layers from COPY www on" \
    "(a page of its own), the clone (demofleet: a new demo folder), the database (initdb into a new volume), the seed"
log "compose: a warm-up round of each side, then $ROUNDS rounds each, baseline and demofleet alternating"
# Pull request numbers: 1..ROUNDS for the rounds, ROUNDS + 1 for the warm-up.
: >"$BENCH_DIR/rounds.txt"
baseline 0 $((ROUNDS + 1))
demofleet 0 $((ROUNDS + 1))
for i in $(seq 1 "$ROUNDS"); do
    baseline "$i" "$i"
    demofleet "$i" "$i"
done

MACHINE="$(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/ {print $2}') GiB"
python3 - "$BENCH_DIR/rounds.txt" "$OUT" "$MACHINE" <<'PY'
import json, statistics, sys
rounds, out, machine = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [dict(word.split("=", 1) for word in line.split()[2:] if "=" in word) for line in open(rounds)]
def median(kind, key):
    values = [float(r[key]) for r in rows if r["kind"] == kind and r.get(key, "none") != "none"]
    return statistics.median(values) if values else float("nan")
base, fleet = median("baseline", "total_ms"), median("demofleet", "total_ms")
base_stages = {k: median("baseline", k) for k in ("clone", "up", "seed", "wait")}
steps = ("checkout", "build", "launch", "health")
fleet_stages = {k: median("demofleet", k) for k in steps + ("intake", "route", "edge")}
# Everything of the demofleet total from the webhook's receipt to the route that no agent
# step accounts for.
fleet_stages["controller"] = statistics.median(
    float(r["received_to_route"]) - sum(float(r[k]) for k in steps) for r in rows if r["kind"] == "demofleet")
slowest = max(steps + ("controller", "edge"), key=lambda k: fleet_stages[k])
ratio = fleet / base
print(f"BENCH compose baseline_median_ms={base:.0f} demofleet_median_ms={fleet:.0f} ratio={ratio:.2f} "
      f"target_ratio=1.15 met={'yes' if ratio <= 1.15 else 'no'} controller_share_ms={fleet_stages['controller']:.0f} "
      f"slowest_stage={slowest} rounds={len(rows) // 2}")
print("BENCH compose baseline_stages_ms " + " ".join(f"{k}={v:.0f}" for k, v in base_stages.items()))
print("BENCH compose demofleet_stages_ms " + " ".join(f"{k}={v:.0f}" for k, v in fleet_stages.items()))
# The containers' timeline, medians of the rounds' intervals in ms: the round's start → db
# started (the builds), → db healthy (initdb, seen through the 1 s health check), → the
# seed started, the seed, the web container started after db healthy, db healthy → the
# first 200.
intervals = {"to_db_up": (None, "db_up_at"), "db_ready": ("db_up_at", "db_healthy_at"),
             "healthy_to_seed": ("db_healthy_at", "seed_start_at"), "seed": ("seed_start_at", "seed_end_at"),
             "healthy_to_web_up": ("db_healthy_at", "web_up_at"), "healthy_to_200": ("db_healthy_at", "total_ms")}
def span(row, start, end):
    """END - START in the round `row` (START None: its start), None where an event is missing."""
    a, b = row.get(start, "0") if start else "0", row.get(end, "none")
    return None if "none" in (a, b) else float(b) - float(a)
timelines = {}
for kind in ("baseline", "demofleet"):
    timelines[kind] = t = {}
    for label, (start, end) in intervals.items():
        spans = [s for s in (span(r, start, end) for r in rows if r["kind"] == kind) if s is not None]
        t[label] = statistics.median(spans) if spans else float("nan")
    print(f"BENCH compose timeline_ms kind={kind} " + " ".join(f"{k}={v:.0f}" for k, v in t.items()))
samples = lambda kind: [float(r["total_ms"]) / 1000 for r in rows if r["kind"] == kind]
result = {
    "part": "compose",
    "machine": machine,
    "rounds": rows,
    "summary": {"baseline_median_ms": base, "demofleet_median_ms": fleet, "ratio": ratio,
                "controller_share_ms": fleet_stages["controller"], "slowest_stage": slowest,
                "baseline_stages_ms": base_stages, "demofleet_stages_ms": fleet_stages, "timelines_ms": timelines},
    "figures": [
        {"name": "e2e-compose-webhook-to-200", "title": "Compose demo (web + PostgreSQL, seeded): webhook → page reading the database",
         "unit": "s", "target_ratio": 1.15,
         "note": "shell baseline: git clone + docker-compose up -d --build + docker-compose run --rm (seed); rings: rounds",
         "bars": [
             {"label": "shell baseline (docker-compose)", "value": base / 1000, "baseline": True, "samples": samples("baseline"),
              "stages": [[k, v / 1000] for k, v in base_stages.items()]},
             {"label": "demofleet", "value": fleet / 1000, "samples": samples("demofleet"),
              "stages": [[k, fleet_stages[k] / 1000] for k in ("controller",) + steps + ("edge",)]},
         ]},
    ],
}
json.dump(result, open(out, "w"), indent=1)
PY
echo "BENCH compose results=$OUT"
echo "machine: $MACHINE, $(uname -r)"
