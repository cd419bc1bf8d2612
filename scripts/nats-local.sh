# nats-local.sh: sourced by the cluster scripts. Checks that nats-server is
# installed, makes a temporary directory ($work), starts nats-server with
# JetStream on a free loopback port storing in it ($nats_url), and on exit
# (or Ctrl-C) stops every process whose pid is in $pids and removes $work.
#
# With natsNodes=3 it starts three nats-servers instead, a NATS cluster
# routed on 127.0.0.1 (free client, route and monitoring ports, a store
# each under $work), waits until JetStream has a meta leader, and sets
# $nats_url to the three URLs, comma-separated, and $stream_replicas to 3
# (1 otherwise). Node i's log is $work/nats$i.log, its monitoring port
# ${nats_monitor[i]}, its pid ${nats_pids[i]}. Functions for the scripts
# that kill nodes: nats_node i (starts node i again, on its store),
# nats_leader (prints the index of the node leading the stream
# ${natsStream:-FOLLOWERMAZE}), nats_healthy i (waits up to 60 s for node i
# to say it is healthy: JetStream current, streams caught up).
#
#   name=cluster.sh; source "$here/scripts/nats-local.sh"

command -v nats-server >/dev/null 2>&1 || {
    echo "${name:-$0}: nats-server is not installed (apt-get install -y nats-server)" >&2
    exit 2
}

nats_nodes="${natsNodes:-1}"
case "$nats_nodes" in
1 | 3) ;;
*)
    echo "${name:-$0}: natsNodes=$nats_nodes: expected 1 or 3" >&2
    exit 2
    ;;
esac

work="$(mktemp -d -t followermaze-cluster.XXXXXX)"
pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup INT TERM EXIT

# free_ports n: n distinct loopback ports nobody listens on now.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

if [ "$nats_nodes" = 1 ]; then
    nats_port="$(free_ports 1)"
    nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/store" >"$work/nats.log" 2>&1 &
    pids+=($!)
    nats_url="nats://127.0.0.1:$nats_port"
    stream_replicas=1
else
    read -r -a ports <<<"$(free_ports 9)"
    nats_client=("${ports[@]:0:3}") nats_route=("${ports[@]:3:3}") nats_monitor=("${ports[@]:6:3}")
    routes="nats://127.0.0.1:${nats_route[0]},nats://127.0.0.1:${nats_route[1]},nats://127.0.0.1:${nats_route[2]}"
    cluster_name="followermaze-$$"
    nats_pids=()
    nats_node() { # i: starts node i, on its store
        nats-server -js -n "n$1" -a 127.0.0.1 -p "${nats_client[$1]}" -m "${nats_monitor[$1]}" \
            -sd "$work/store$1" --cluster_name "$cluster_name" \
            --cluster "nats://127.0.0.1:${nats_route[$1]}" --routes "$routes" \
            >>"$work/nats$1.log" 2>&1 &
        nats_pids[$1]=$!
        pids+=($!)
    }
    nats_leader() { # prints the index of the node leading the stream, if any knows
        for i in 0 1 2; do
            curl -s "127.0.0.1:${nats_monitor[i]}/jsz?accounts=true&streams=true" 2>/dev/null |
                python3 -c '
import json, sys
name = sys.argv[1]
for account in json.load(sys.stdin).get("account_details", []):
    for stream in account.get("stream_detail", []):
        if stream.get("name") == name:
            leader = (stream.get("cluster") or {}).get("leader", "")
            if leader.startswith("n"):
                print(leader[1:]); sys.exit(0)
sys.exit(1)' "${natsStream:-FOLLOWERMAZE}" 2>/dev/null && return 0
        done
        return 1
    }
    nats_healthy() { # i: waits up to 60 s for node i's /healthz to say ok
        for _ in $(seq 600); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:${nats_monitor[$1]}/healthz")" = 200 ] && return 0
            sleep 0.1
        done
        return 1
    }
    urls=()
    for i in 0 1 2; do
        nats_node "$i"
        urls+=("nats://127.0.0.1:${nats_client[i]}")
    done
    nats_url="$(IFS=,; echo "${urls[*]}")"
    stream_replicas=3
    # Every node must know the meta leader: until then JetStream answers
    # nothing (a stream of 3 replicas needs all three).
    for _ in $(seq 300); do
        led=0
        for i in 0 1 2; do
            curl -s "127.0.0.1:${nats_monitor[i]}/jsz" |
                python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin).get("meta_cluster", {}).get("leader") else 1)' \
                    2>/dev/null && led=$((led + 1))
        done
        [ "$led" = 3 ] && break
        sleep 0.1
    done
    if [ "$led" != 3 ]; then
        echo "${name:-$0}: the 3-node NATS cluster has no JetStream meta leader within 30 s; logs:" >&2
        tail -n 20 "$work"/nats*.log >&2
        exit 1
    fi
fi
