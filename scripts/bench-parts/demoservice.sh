# The demoservice stand-in (benches/demoservice, see its README): the baseline of the intake
# benchmarks. Sourced by scripts/bench.
DEMOSERVICE_VENV=${DEMOFLEET_DEMOSERVICE_VENV:-/var/tmp/demofleet-demoservice-venv}
DEMOSERVICE_DIR=$ROOT/benches/demoservice

# ensure_demoservice: its virtualenv with the pinned packages from PyPI, made again when the
# pins change.
ensure_demoservice() {
    if cmp -s "$DEMOSERVICE_DIR/requirements.txt" "$DEMOSERVICE_VENV/requirements.txt"; then return 0; fi
    log "installing the demoservice stand-in's packages into $DEMOSERVICE_VENV"
    rm -rf "$DEMOSERVICE_VENV"
    python3 -m venv "$DEMOSERVICE_VENV"
    "$DEMOSERVICE_VENV/bin/pip" install -q -r "$DEMOSERVICE_DIR/requirements.txt"
    cp "$DEMOSERVICE_DIR/requirements.txt" "$DEMOSERVICE_VENV/requirements.txt"
}

# start_demoservice PORT VHOST LOG: gunicorn with 2 sync workers on 127.0.0.1:PORT and one
# Celery worker, on a fresh RabbitMQ vhost VHOST, webhook secret $SECRET; returns once it
# answers. The gunicorn master's pid in DEMOSERVICE_PID, the Celery worker's in
# DEMOSERVICE_WORKER_PID; both added to STARTED.
start_demoservice() {
    local port=$1 vhost=$2 out=$3
    ensure_demoservice
    bench_vhost "$vhost"
    local broker="amqp://$AMQP_USER:$AMQP_PASSWORD@127.0.0.1:5672/$vhost"
    (cd "$DEMOSERVICE_DIR" && GITHUB_WEBHOOK_SECRET="$SECRET" DEMOSERVICE_BROKER_URL="$broker" \
        exec "$DEMOSERVICE_VENV/bin/gunicorn" demoservice.wsgi --workers 2 --bind "127.0.0.1:$port" \
        --log-level warning >"$out" 2>&1) &
    DEMOSERVICE_PID=$!
    STARTED+=($DEMOSERVICE_PID)
    (cd "$DEMOSERVICE_DIR" && GITHUB_WEBHOOK_SECRET="$SECRET" DEMOSERVICE_BROKER_URL="$broker" \
        exec "$DEMOSERVICE_VENV/bin/celery" -A demoservice.tasks worker --pool solo --loglevel warning \
        --without-gossip --without-mingle --without-heartbeat >"$out.celery" 2>&1) &
    DEMOSERVICE_WORKER_PID=$!
    STARTED+=($DEMOSERVICE_WORKER_PID)
    # An unsigned delivery is refused with 403 once the workers serve.
    wait_for "the demoservice stand-in on port $port" 60 \
        bash -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:$port/webhook/github)\" = 403 ]"
}

# stop_demoservice: end the stand-in's gunicorn and Celery worker, and wait for them.
stop_demoservice() {
    kill "$DEMOSERVICE_PID" "$DEMOSERVICE_WORKER_PID" 2>/dev/null || true
    wait "$DEMOSERVICE_PID" "$DEMOSERVICE_WORKER_PID" 2>/dev/null || true
}

# celery_queue VHOST FIELD: FIELD of its Celery queue from RabbitMQ's management API
# (`publish`: messages published into it so far; `messages`: waiting now); 0 before the
# first task made the queue.
celery_queue() {
    curl -sS -u "$AMQP_USER:$AMQP_PASSWORD" "http://127.0.0.1:15672/api/queues/$1/celery" | python3 -c '
import json, sys
queue = json.load(sys.stdin)
print(queue.get("message_stats", {}).get(sys.argv[1], 0) if sys.argv[1] == "publish" else queue.get(sys.argv[1], 0))' "$2"
}
demoservice_published() { celery_queue "$1" publish; }
demoservice_queued() { celery_queue "$1" messages; }
