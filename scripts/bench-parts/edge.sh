# The edge part, sourced by scripts/bench: a demo that keeps connections alive (nginx
# serving a small page), routed like a running demo, hit in alternating rounds
#   direct         at its published port (through Docker's userland proxy);
#   direct-bridge  at the container's address on its network (no proxy of Docker's);
#   edge           through the edge, to the published port;
#   edge-bridge    through the edge, to the container's address (a demo on the edge's own
#                  host reached on the demo network);
#   nginx, haproxy through nginx and HAProxy as reverse proxies (benches/edge), to the
#                  published port;
# with wrk (2 threads, 32 connections): requests/s, p99, and CPU per request of the whole
# machine and of the proxy's own processes; medians of the rounds. Then Docker's userland
# proxy against `userland-proxy: false` (scripts/bench-parts/userland-proxy.sh).
# The edge benchmark's demo: Debian's nginx with the libraries it links, imported as an
# image of its own (no registry here); one worker, keep-alive on, a small static page.
BENCH_SITE_IMAGE=demofleet/bench-nginx:1
ensure_bench_site_image() {
    docker image inspect "$BENCH_SITE_IMAGE" >/dev/null 2>&1 && return 0
    apt_install nginx-light
    local rootfs nginx lib
    rootfs=$(mktemp -d); nginx=$(command -v nginx)
    mkdir -p "$rootfs"/{etc/nginx,tmp,www,var/log/nginx}
    cp --parents "$nginx" "$rootfs"
    for lib in $(ldd "$nginx" | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$rootfs"; done
    echo 'root:x:0:0:root:/root:/bin/false' >"$rootfs/etc/passwd"
    echo 'root:x:0:' >"$rootfs/etc/group"
    echo '<!doctype html><title>bench</title><h1>bench</h1>' >"$rootfs/www/index.html"
    cat >"$rootfs/etc/nginx/nginx.conf" <<'CONF'
user root;
worker_processes 1;
daemon off;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    server { listen 8080; root /www; }
}
CONF
    tar -C "$rootfs" -c . | docker import -c "CMD [\"$nginx\", \"-c\", \"/etc/nginx/nginx.conf\"]" - "$BENCH_SITE_IMAGE" >/dev/null
    rm -rf "$rootfs"
}

SITE=demofleet-bench-site
SITE_NETWORK=demofleet-bench-edge
EDGE_ROUNDS=${DEMOFLEET_BENCH_EDGE_ROUNDS:-5}
ROUND_SECONDS=$(( DURATION / 5 > 4 ? DURATION / 5 : 4 ))
EDGE=127.0.0.1:$((PORT + 80))
NGINX_LISTEN=127.0.0.1:$((PORT + 81)) HAPROXY_LISTEN=127.0.0.1:$((PORT + 82))
EDGE_HOST=bench-o-pr-1.localhost

ensure_bench_site_image
apt_install nginx-light haproxy
docker rm -f $SITE >/dev/null 2>&1 || true
docker network inspect $SITE_NETWORK >/dev/null 2>&1 || docker network create $SITE_NETWORK >/dev/null
ON_EXIT+=("docker rm -f $SITE" "docker network rm $SITE_NETWORK")
docker run -d --name $SITE --network $SITE_NETWORK -p 127.0.0.1::8080 "$BENCH_SITE_IMAGE" >/dev/null
SITE_PORT=$(docker port $SITE 8080/tcp | head -1 | sed 's/.*://')
SITE_ADDRESS=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$SITE_NETWORK\").IPAddress}}" $SITE)
# The same demo twice: by its published port, and by its address on its network.
su postgres -c "psql -d $BENCH_DB -qc \"insert into hosts (id, address, capacity) values ('bench-host', '127.0.0.1', 1),
        ('bench-bridge', '$SITE_ADDRESS', 1);
    insert into demos (id, owner, repo, pr, name, desired, state, sha, clone_url, github_user, host_id, serving_host, host_port, routed)
    values (gen_random_uuid(), 'o', 'bench', 1, 'bench-o-pr-1', 'running', 'running', 'x', 'x', 'x', 'bench-host', 'bench-host', $SITE_PORT, true),
           (gen_random_uuid(), 'o', 'bench', 2, 'bench-o-pr-2', 'running', 'running', 'x', 'x', 'x', 'bench-bridge', 'bench-bridge', 8080, true)\"" >/dev/null

# render TEMPLATE OUT DIR LISTEN: a proxy's configuration from benches/edge.
render() {
    sed -e "s|@DIR@|$3|g" -e "s|@LISTEN@|$4|g" -e "s|@UPSTREAM@|127.0.0.1:$SITE_PORT|g" "$ROOT/benches/edge/$1" >"$2"
}
NGINX_DIR=$BENCH_DIR/edge-nginx
rm -rf "$NGINX_DIR" && mkdir -p "$NGINX_DIR"
render nginx.conf "$NGINX_DIR/nginx.conf" "$NGINX_DIR" "$NGINX_LISTEN"
nginx -p "$NGINX_DIR" -c "$NGINX_DIR/nginx.conf" >"$NGINX_DIR/out.log" 2>&1 &
NGINX_PID=$!
STARTED+=($NGINX_PID)
render haproxy.cfg "$BENCH_DIR/haproxy.cfg" "$BENCH_DIR" "$HAPROXY_LISTEN"
haproxy -db -f "$BENCH_DIR/haproxy.cfg" >"$BENCH_DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!
STARTED+=($HAPROXY_PID)
for through in "$EDGE" "$NGINX_LISTEN" "$HAPROXY_LISTEN"; do
    wait_for "the bench demo through $through" 30 curl -fsS -H "Host: $EDGE_HOST" "http://$through/"
done
wait_for "the edge to route the demo's bridge address" 30 curl -fsS -H "Host: bench-o-pr-2.localhost" "http://$EDGE/"

# edge_target NAME: `URL HOST PID` of a target (PID: the proxy whose CPU counts, 0 for none).
edge_target() {
    case $1 in
        direct) echo "http://127.0.0.1:$SITE_PORT/ 127.0.0.1:$SITE_PORT 0" ;;
        direct-bridge) echo "http://$SITE_ADDRESS:8080/ $SITE_ADDRESS:8080 0" ;;
        edge) echo "http://$EDGE/ $EDGE_HOST $MAIN_CONTROLLER" ;;
        edge-bridge) echo "http://$EDGE/ bench-o-pr-2.localhost $MAIN_CONTROLLER" ;;
        nginx) echo "http://$NGINX_LISTEN/ $EDGE_HOST $NGINX_PID" ;;
        haproxy) echo "http://$HAPROXY_LISTEN/ $EDGE_HOST $HAPROXY_PID" ;;
    esac
}
EDGE_TARGETS=(direct direct-bridge edge edge-bridge nginx haproxy)
log "edge: $EDGE_ROUNDS rounds of wrk -t2 -c32 -d${ROUND_SECONDS}s, ${EDGE_TARGETS[*]} alternating"
rm -f "$BENCH_DIR"/edge-*.txt
for round in $(seq 1 "$EDGE_ROUNDS"); do
    for target in "${EDGE_TARGETS[@]}"; do
        read -r url host pid < <(edge_target $target)
        out=$BENCH_DIR/edge-$target-$round.txt
        machine_before=$(machine_ticks) proxy_before=0
        [ "$pid" = 0 ] || proxy_before=$(cpu_tree_ticks "$pid")
        wrk -t2 -c32 -d"${ROUND_SECONDS}s" --latency -H "Host: $host" "$url" >"$out"
        machine_after=$(machine_ticks) proxy_after=0
        [ "$pid" = 0 ] || proxy_after=$(cpu_tree_ticks "$pid")
        # CPU per request: the machine's (wrk, Docker's proxy, nginx and the proxy under
        # test) and the proxy's own processes'.
        echo "cpu: machine=$((machine_after - machine_before)) proxy=$((proxy_after - proxy_before)) hz=$(getconf CLK_TCK)" >>"$out"
        echo "BENCH edge round=$round $target rps=$(awk '/Requests\/sec/ {print $2}' "$out") p99=$(awk '$1 == "99%" {print $2}' "$out") $(awk '/Non-2xx|Socket errors/' "$out" | tr '\n' ' ')$(tail -1 "$out")"
        if grep -q "Non-2xx" "$out"; then fail "edge round $round, $target: answers other than 2xx"; fi
    done
done
for target in "${EDGE_TARGETS[@]}"; do
    "$ROOT/scripts/bench-parts/wrk-medians" edge $target "$BENCH_DIR"/edge-$target-[0-9]*.txt
done

if [ "${DEMOFLEET_BENCH_USERLAND_PROXY:-1}" = 1 ]; then source "$ROOT/scripts/bench-parts/userland-proxy.sh"; fi
