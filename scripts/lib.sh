# Shared shell helpers for scripts/up, scripts/test and scripts/down. Sourced, not run.
# Everything here is idempotent: running it again finds what is there and leaves it.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${DEMOFLEET_STATE_DIR:-$ROOT/.demofleet}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/demofleet-target}

# Local service credentials. Every service listens on loopback only; the passwords are
# random, made once per machine and kept (mode 0600) outside the clone, so scripts/up and
# scripts/test of any clone share them. Override through the environment.
CREDENTIALS_FILE=${DEMOFLEET_CREDENTIALS_FILE:-/var/lib/demofleet-dev/credentials}
if [ ! -s "$CREDENTIALS_FILE" ]; then
    mkdir -p "$(dirname "$CREDENTIALS_FILE")"
    (umask 077; printf 'pg=%s\namqp=%s\n' "$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
        "$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$CREDENTIALS_FILE")
fi
PG_USER=${DEMOFLEET_PG_USER:-demofleet}
PG_PASSWORD=${DEMOFLEET_PG_PASSWORD:-$(awk -F= '$1 == "pg" {print $2}' "$CREDENTIALS_FILE")}
PG_DB=${DEMOFLEET_PG_DB:-demofleet}
AMQP_USER=${DEMOFLEET_AMQP_USER:-demofleet}
AMQP_PASSWORD=${DEMOFLEET_AMQP_PASSWORD:-$(awk -F= '$1 == "amqp" {print $2}' "$CREDENTIALS_FILE")}
# The machine's RabbitMQ node: its configuration, kept beside the credentials.
RABBITMQ_DIR=${DEMOFLEET_RABBITMQ_DIR:-/var/lib/demofleet-dev/rabbitmq}
AMQP_VHOST=${DEMOFLEET_AMQP_VHOST:-demofleet}
NATS_PORT=${DEMOFLEET_NATS_PORT:-4222}
BASE_IMAGE=${DEMOFLEET_BASE_IMAGE:-demofleet/base:busybox}
OIDC_PORT=${DEMOFLEET_OIDC_PORT:-9400}
# A virtualenv outside the clone, kept between runs (like the cargo target directory).
OIDC_VENV=${DEMOFLEET_OIDC_VENV:-/var/tmp/demofleet-oidc-venv}
OIDC_MOCK_VERSION=0.3.4

log() { printf '\033[1m==>\033[0m %s\n' "$*" >&2; }

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
    local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) > deadline )); then echo "timed out waiting for $what" >&2; return 1; fi
        sleep 0.3
    done
}

# stop_pidfile FILE: end the process whose id FILE holds (ours), wait for it, remove FILE.
stop_pidfile() {
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        wait_for "process $pid to end" 30 bash -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# apt_install PACKAGE...: install with apt-get those of the packages that are absent; runs
# `apt-get update` only when one is. One install at a time on the machine (tests that run
# side by side may each need one, and apt-get refuses to run twice at once), so the check is
# made once it is this caller's turn.
apt_install() {
    (
        flock 9
        local missing=() pkg
        for pkg in "$@"; do
            dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
        done
        ((${#missing[@]})) || exit 0
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    ) 9>"${TMPDIR:-/tmp}/demofleet-apt.lock"
}

# Install what the stack and the tests need, if absent.
ensure_packages() {
    # systemd: only for `systemd-analyze verify` of the units in dist/systemd; chromium and
    # its driver: for the dashboard's browser test.
    apt_install postgresql rabbitmq-server nats-server git busybox-static curl iproute2 openssl systemd \
        chromium chromium-driver
    command -v docker >/dev/null || { echo "docker is required and not installed" >&2; return 1; }
    docker info >/dev/null 2>&1 || { echo "the Docker Engine is not reachable" >&2; return 1; }
}

start_postgres() {
    local version cluster
    version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    cluster=$(pg_lsclusters -h | awk 'NR==1 {print $2}')
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -n | tail -1); cluster=main
        pg_createcluster "$version" "$cluster" >/dev/null
    fi
    if ! pg_lsclusters -h | awk -v c="$cluster" '$2==c {print $4}' | grep -q online; then
        log "starting PostgreSQL $version/$cluster"
        pg_ctlcluster "$version" "$cluster" start
    fi
    wait_for postgres 30 su postgres -c "psql -qtAc 'select 1'"
    su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='$PG_USER'\"" | grep -q 1 ||
        su postgres -c "psql -qc \"create role $PG_USER login createdb\""
    # The password from the credentials file, set every time (a role made before keeps up).
    su postgres -c "psql -qc \"alter role $PG_USER password '$PG_PASSWORD'\"" >/dev/null
    su postgres -c "psql -qtAc \"select 1 from pg_database where datname='$PG_DB'\"" | grep -q 1 ||
        su postgres -c "createdb -O $PG_USER $PG_DB"
}

start_rabbitmq() {
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        log "starting RabbitMQ on 127.0.0.1"
        # Loopback only: AMQP (5672), the management API (15672), Erlang distribution (25672)
        # and epmd (4369). An epmd already listening elsewhere (a package's) is restarted.
        mkdir -p "$RABBITMQ_DIR"
        printf 'listeners.tcp.default = 127.0.0.1:5672\nmanagement.tcp.ip = 127.0.0.1\n' \
            >"$RABBITMQ_DIR/rabbitmq.conf"
        if ss -Hltn 'sport = :4369' | awk '{print $4}' | grep -qv '^127\.0\.0\.1:'; then epmd -kill >/dev/null || true; fi
        # Started here rather than by the node, which does not pass the address on to it.
        ss -Hltn 'sport = :4369' | grep -q . || epmd -address 127.0.0.1 -daemon
        ERL_EPMD_ADDRESS=127.0.0.1 RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_CONFIG_FILE="$RABBITMQ_DIR/rabbitmq.conf" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
            rabbitmq-server -detached >/dev/null 2>&1 || true
        wait_for rabbitmq 90 rabbitmqctl -q await_startup
    elif ss -Hltn 'sport = :5672' | awk '{print $4}' | grep -qvE '^(127\.0\.0\.1|\[::1\]):'; then
        log "warning: RabbitMQ, started before, listens beyond loopback; scripts/down, then start again to fix"
    fi
    rabbitmq-plugins -q list -e -m | grep -qx rabbitmq_management ||
        rabbitmq-plugins -q enable rabbitmq_management >/dev/null
    rabbitmqctl -q list_users | awk '{print $1}' | grep -qx "$AMQP_USER" ||
        rabbitmqctl -q add_user "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
    rabbitmqctl -q change_password "$AMQP_USER" "$AMQP_PASSWORD" >/dev/null
    # administrator: the test harness creates a vhost per test through the management API.
    rabbitmqctl -q set_user_tags "$AMQP_USER" administrator >/dev/null
    rabbitmqctl -q list_vhosts | grep -qx "$AMQP_VHOST" || rabbitmqctl -q add_vhost "$AMQP_VHOST" >/dev/null
    rabbitmqctl -q set_permissions -p "$AMQP_VHOST" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
    wait_for "rabbitmq management" 60 curl -fsS -u "$AMQP_USER:$AMQP_PASSWORD" http://127.0.0.1:15672/api/overview
}

start_nats() {
    mkdir -p "$STATE_DIR"
    if ! (exec 3<>/dev/tcp/127.0.0.1/"$NATS_PORT") 2>/dev/null; then
        log "starting NATS on 127.0.0.1:$NATS_PORT"
        nohup nats-server -a 127.0.0.1 -p "$NATS_PORT" -P "$STATE_DIR/nats.pid" \
            >"$STATE_DIR/nats.log" 2>&1 &
        wait_for nats 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/$NATS_PORT"
    fi
}

# The image example demos build FROM: a busybox-static rootfs imported into Docker (no registry here).
ensure_base_image() {
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
    log "building base image $BASE_IMAGE from busybox-static"
    local rootfs; rootfs=$(mktemp -d)
    mkdir -p "$rootfs"/{bin,etc,tmp,www,var/www}
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in $("$rootfs/bin/busybox" --list); do
        [ -e "$rootfs/bin/$applet" ] || ln -s busybox "$rootfs/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
    echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
    tar -C "$rootfs" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

# The local OpenID provider for one machine and the tests: oidc-provider-mock from PyPI.
start_oidc() {
    mkdir -p "$STATE_DIR"
    if ! "$OIDC_VENV/bin/python" -c "import oidc_provider_mock" >/dev/null 2>&1 ||
        [ "$("$OIDC_VENV/bin/pip" show oidc-provider-mock 2>/dev/null | awk '/^Version/ {print $2}')" != "$OIDC_MOCK_VERSION" ]; then
        log "installing oidc-provider-mock $OIDC_MOCK_VERSION into $OIDC_VENV"
        python3 -m venv "$OIDC_VENV"
        "$OIDC_VENV/bin/pip" install -q "oidc-provider-mock==$OIDC_MOCK_VERSION"
    fi
    if ! curl -fsS "http://127.0.0.1:$OIDC_PORT/.well-known/openid-configuration" >/dev/null 2>&1; then
        log "starting the OpenID provider on 127.0.0.1:$OIDC_PORT"
        nohup "$OIDC_VENV/bin/oidc-provider-mock" --host 127.0.0.1 --port "$OIDC_PORT" \
            >"$STATE_DIR/oidc.log" 2>&1 &
        echo $! >"$STATE_DIR/oidc.pid"
        wait_for "the OpenID provider" 30 curl -fsS "http://127.0.0.1:$OIDC_PORT/.well-known/openid-configuration"
    fi
}

# ansible-core and ansible-lint for the playbooks in ansible/ and their test, in a virtualenv
# outside the clone, kept between runs (like the OpenID provider's).
ANSIBLE_VENV=${DEMOFLEET_ANSIBLE_VENV:-/var/tmp/demofleet-ansible-venv}
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1

# pip_version VENV PACKAGE: the version of PACKAGE installed in the virtualenv VENV, if any.
pip_version() { "$1/bin/pip" show "$2" 2>/dev/null | awk '/^Version/ {print $2}'; }

ensure_ansible() {
    if [ "$(pip_version "$ANSIBLE_VENV" ansible-core)" != "$ANSIBLE_CORE_VERSION" ] ||
        [ "$(pip_version "$ANSIBLE_VENV" ansible-lint)" != "$ANSIBLE_LINT_VERSION" ]; then
        log "installing ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION into $ANSIBLE_VENV"
        python3 -m venv "$ANSIBLE_VENV"
        "$ANSIBLE_VENV/bin/pip" install -q "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"
    fi
    # tests/tests/ansible_traefik.rs finds the playbook tools here.
    export DEMOFLEET_ANSIBLE_VENV=$ANSIBLE_VENV
}

# pg_url DB: the URL of database DB on the local PostgreSQL.
pg_url() { echo "postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/$1"; }

# api_token DB FILE [CONTROLLER]: an API token for scripts in FILE, made in database DB
# (whose migrations have run) with `demofleet-controller tokens create`, unless FILE already
# holds a live one (`tokens check`). CONTROLLER is the controller's binary (default: the
# release build).
api_token() {
    local url file=$2 bin=${3:-$CARGO_TARGET_DIR/release/demofleet-controller} token
    url=$(pg_url "$1")
    if [ -s "$file" ] && DEMOFLEET_DATABASE_URL=$url "$bin" tokens check <"$file" >/dev/null 2>&1; then
        return 0
    fi
    token=$(DEMOFLEET_DATABASE_URL=$url "$bin" tokens create scripts)
    (umask 077; printf %s "$token" >"$file")
}

start_services() {
    ensure_packages
    start_postgres
    start_rabbitmq
    start_nats
    start_oidc
    ensure_base_image
}

# The URLs of the local services, for the controller, agent and tests.
export_service_env() {
    export DEMOFLEET_DATABASE_URL=${DEMOFLEET_DATABASE_URL:-$(pg_url "$PG_DB")}
    export DEMOFLEET_AMQP_URL=${DEMOFLEET_AMQP_URL:-amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$AMQP_VHOST}
    export DEMOFLEET_AMQP_MANAGEMENT_URL=${DEMOFLEET_AMQP_MANAGEMENT_URL:-http://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:15672}
    export DEMOFLEET_NATS_URL=${DEMOFLEET_NATS_URL:-nats://127.0.0.1:$NATS_PORT}
    export DEMOFLEET_BASE_IMAGE=$BASE_IMAGE
    export DEMOFLEET_OIDC_ISSUER=${DEMOFLEET_OIDC_ISSUER:-http://127.0.0.1:$OIDC_PORT}
}

# bench_slice DB VHOST: a benchmark's own database and RabbitMQ vhost, made afresh (an
# earlier run's are dropped first).
bench_slice() {
    su postgres -c "psql -qc 'drop database if exists $1 with (force)'" >/dev/null
    su postgres -c "createdb -O $PG_USER $1"
    bench_vhost "$2"
}

# bench_vhost VHOST: a benchmark's own RabbitMQ vhost, made afresh.
bench_vhost() {
    rabbitmqctl -q delete_vhost "$1" >/dev/null 2>&1 || true
    rabbitmqctl -q add_vhost "$1" >/dev/null
    rabbitmqctl -q set_permissions -p "$1" "$AMQP_USER" '.*' '.*' '.*' >/dev/null
}

# bench_controller LOG DB VHOST PREFIX PORT [NAME=VALUE...]: a release controller on a
# benchmark's database DB, vhost VHOST and NATS prefix PREFIX, its API on 127.0.0.1:PORT and
# its edge on PORT + 80, webhook secret $SECRET, every author trusted, warnings only, with
# more settings NAME=VALUE; output to LOG. Started in the background; its pid in BENCH_PID.
bench_controller() {
    local log=$1 db=$2 vhost=$3 prefix=$4 port=$5
    shift 5
    env DEMOFLEET_WEBHOOK_SECRET="$SECRET" \
        DEMOFLEET_DATABASE_URL="$(pg_url "$db")" \
        DEMOFLEET_AMQP_URL="amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$vhost" \
        DEMOFLEET_NATS_PREFIX="$prefix" DEMOFLEET_TRUSTED_AUTHORS='*' \
        DEMOFLEET_LISTEN="127.0.0.1:$port" DEMOFLEET_EDGE_LISTEN="127.0.0.1:$((port + 80))" DEMOFLEET_LOG=warn \
        "$@" "$CARGO_TARGET_DIR/release/demofleet-controller" >"$log" 2>&1 &
    BENCH_PID=$!
}

# bench_enrol DB VHOST PREFIX HOST...: enrol each HOST (unless it is) on a benchmark's
# database DB (migrated first), vhost VHOST and NATS prefix PREFIX, as `hosts enroll` does:
# the controller takes heartbeats only from enrolled hosts. The benchmark's agents log in
# as the broker's own user, so no broker users are made.
bench_enrol() {
    local db=$1 vhost=$2 prefix=$3
    shift 3
    local -a settings=(env -u DEMOFLEET_AMQP_MANAGEMENT_URL DEMOFLEET_DATABASE_URL="$(pg_url "$db")"
        DEMOFLEET_AMQP_URL="amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$vhost" DEMOFLEET_NATS_PREFIX="$prefix")
    "${settings[@]}" "$CARGO_TARGET_DIR/release/demofleet-controller" migrate 2>/dev/null
    for host in "$@"; do
        "${settings[@]}" "$CARGO_TARGET_DIR/release/demofleet-controller" hosts enroll --unless-enrolled "$host" \
            >/dev/null 2>"$STATE_DIR/bench-enrol.log" ||
            { cat "$STATE_DIR/bench-enrol.log" >&2; log "enrolling host $host on database $db failed"; return 1; }
    done
}

# bench_agent LOG HOST DEMO_DIR CAPACITY VHOST PREFIX REPOS: a release agent for host HOST
# (enrolled first: bench_enrol) with its demos in DEMO_DIR, on a benchmark's vhost and NATS
# prefix, fetching from the repositories under REPOS (file:// URLs), warnings only; output
# to LOG. Started in the background; its pid in BENCH_PID.
bench_agent() {
    DEMOFLEET_HOST_ID=$2 DEMOFLEET_DEMO_DIR=$3 DEMOFLEET_CAPACITY=$4 DEMOFLEET_GIT_LOCAL_ROOT=$7 \
    DEMOFLEET_AMQP_URL="amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$5" \
    DEMOFLEET_NATS_PREFIX=$6 DEMOFLEET_LOG=warn \
        "$CARGO_TARGET_DIR/release/demofleet-agent" >"$1" 2>&1 &
    BENCH_PID=$!
}
