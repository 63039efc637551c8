# Docker's userland proxy against `userland-proxy: false`, sourced by the edge part. The
# machine's engine is left alone: two engines of the benchmark's own, each in a network
# namespace of its own (so their iptables rules are theirs) and in a PID and mount namespace
# of its own (killing it ends its containers), one with the userland proxy and one without,
# each running the bench demo published on 127.0.0.1. wrk runs inside each namespace against
# that published port, in alternating rounds: the path the edge takes to a demo on its own
# host (host address 127.0.0.1). From another machine, Docker forwards a published port with
# iptables either way; only local connections go through its proxy.
USERLAND_DIR=/var/tmp/demofleet-bench-engines
USERLAND_MODES=(proxy no-proxy)
STORAGE_DRIVER=$(docker info --format '{{.Driver}}')

# userland_engine MODE: the namespace, engine and demo of MODE, started; `docker` for it
# in ENGINE_<MODE>.
userland_engine() {
    local mode=$1 ns=dfbench-$1 dir=$USERLAND_DIR/$1 proxy=true
    [ "$mode" = no-proxy ] && proxy=false
    ip netns del $ns 2>/dev/null || true
    rm -rf "$dir" && mkdir -p "$dir"
    ip netns add $ns
    ON_EXIT+=("ip netns del $ns" "rm -rf $dir")
    ip netns exec $ns ip link set lo up
    echo '{}' >"$dir/daemon.json"
    unshare --pid --fork --kill-child --mount-proc nsenter --net=/run/netns/$ns \
        dockerd --config-file "$dir/daemon.json" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/docker.pid" --host "unix://$dir/docker.sock" --storage-driver "$STORAGE_DRIVER" \
        --bip 172.30.0.1/16 --userland-proxy=$proxy </dev/null >"$dir/dockerd.log" 2>&1 &
    STARTED+=($!)
    local engine="docker -H unix://$dir/docker.sock"
    wait_for "the $mode engine" 60 $engine version
    docker save "$BENCH_SITE_IMAGE" | $engine load -q >/dev/null
    $engine run -d --name $SITE -p 127.0.0.1:8080:8080 "$BENCH_SITE_IMAGE" >/dev/null
    wait_for "the demo on the $mode engine" 30 ip netns exec $ns curl -fsS http://127.0.0.1:8080/
    # The engine does what its setting says: a docker-proxy process for the published port,
    # or none.
    local proxies=0 pid
    for pid in $(ip netns pids $ns); do
        [ "$(cat /proc/$pid/comm 2>/dev/null)" = docker-proxy ] && proxies=$((proxies + 1))
    done
    if [ $proxy = true ] && [ $proxies = 0 ] || [ $proxy = false ] && [ $proxies != 0 ]; then
        fail "the $mode engine runs $proxies docker-proxy processes"
    fi
}

log "edge: Docker's userland proxy against userland-proxy: false, on engines of the benchmark's own"
for mode in "${USERLAND_MODES[@]}"; do userland_engine $mode; done
for round in $(seq 1 "$EDGE_ROUNDS"); do
    for mode in "${USERLAND_MODES[@]}"; do
        out=$BENCH_DIR/userland-$mode-$round.txt
        machine_before=$(machine_ticks)
        ip netns exec dfbench-$mode wrk -t2 -c32 -d"${ROUND_SECONDS}s" --latency http://127.0.0.1:8080/ >"$out"
        echo "cpu: machine=$(( $(machine_ticks) - machine_before )) hz=$(getconf CLK_TCK)" >>"$out"
        echo "BENCH userland round=$round $mode rps=$(awk '/Requests\/sec/ {print $2}' "$out") p99=$(awk '$1 == "99%" {print $2}' "$out") $(awk '/Non-2xx|Socket errors/' "$out" | tr '\n' ' ')"
    done
done
for mode in "${USERLAND_MODES[@]}"; do
    "$ROOT/scripts/bench-parts/wrk-medians" userland $mode "$BENCH_DIR"/userland-$mode-[0-9]*.txt
done
