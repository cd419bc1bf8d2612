#!/usr/bin/env bash
# cluster-kill.sh: a gateway, and with three NATS nodes a nats-server too,
# SIGKILLed in the middle of a resumable run. Starts nats-server
# (JetStream, temporary store), a sequencer and three gateways on
# 127.0.0.1, waits until every gateway's /readyz says 200, runs the
# verifier with resumable clients spread over the three, SIGKILLs the
# second gateway `killAfterMs` into the run and, with natsNodes=3, the NATS
# node(s) `natsKill` names `natsKillAfterMs` into it. Once the verifier is
# done it restarts what it killed and waits for each to be ready again (the
# gateway from a snapshot, a NATS node caught up), prints each gateway's
# peak RSS and the longest time gateway 0 applied nothing mid-run, then
# stops everything. Exits with the verifier's status (0: every
# notification received, every resume verdict right), or 1 if a restarted
# process does not become ready in time.
#
#   scripts/cluster-kill.sh                       # 10M events
#   natsNodes=3 scripts/cluster-kill.sh           # and the stream's leader
#   natsNodes=3 natsKill=all scripts/cluster-kill.sh  # the whole NATS cluster, restarted at once
#   totalEvents=3000000 offlineMs=3000 killswitchMs=1000 scripts/cluster-kill.sh
#
# Settings (environment): killAfterMs=1000 totalEvents=10000000
# killswitchMs=200 roleLogLevel=warn (the roles' logLevel) basePort=29090 (sequencer events; gateway i serves
# clients on basePort+9+i, metrics on basePort+102+i); natsNodes=1 (or 3: a
# three-node NATS cluster on 127.0.0.1, its three URLs given to every role
# with streamReplicas=3); natsKill=leader (the node leading the stream),
# follower (another), all (every node, started again at once: the
# sequencer holds the source back meanwhile) or none; natsKillAfterMs=3000;
# any other verifier variable (offlineMs, randomSeed, ...) is passed to the
# verifier.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}/release"
kill_after_ms="${killAfterMs:-1000}"
nats_kill="${natsKill:-leader}"
nats_kill_after_ms="${natsKillAfterMs:-3000}"
case "$nats_kill" in
leader | follower | all | none) ;;
*)
    echo "cluster-kill.sh: natsKill=$nats_kill: expected leader, follower, all or none" >&2
    exit 2
    ;;
esac
if [ "$nats_kill_after_ms" -lt "$kill_after_ms" ]; then
    echo "cluster-kill.sh: natsKillAfterMs must be at least killAfterMs" >&2
    exit 2
fi
base="${basePort:-29090}"
export totalEvents="${totalEvents:-10000000}" killswitchMs="${killswitchMs:-200}"

cargo build --release --quiet --manifest-path "$here/Cargo.toml" \
    -p followermaze -p followermaze-verify
name=cluster-kill.sh
# shellcheck source=scripts/nats-local.sh
source "$here/scripts/nats-local.sh"
node=(env natsUrl="$nats_url" streamReplicas="$stream_replicas" bindAddress=127.0.0.1 summaryIntervalSecs=0
      logLevel="${roleLogLevel:-warn}" "$target/followermaze")
env role=sequencer eventListenerPort="$base" metricsPort=$((base + 101)) "${node[@]}" \
    2>"$work/sequencer.log" &
pids+=($!)
gateways=()
gateway() { # index: starts gateway `index`, its pid in gateways[index]
    env role=gateway clientListenerPort=$((base + 9 + $1)) metricsPort=$((base + 102 + $1)) webPort=0 \
        "${node[@]}" >/dev/null 2>>"$work/gateway$1.log" &
    gateways[$1]=$!
    pids+=($!)
}
ready() { # index: waits up to 30 s for gateway `index` to say 200 on /readyz
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$((base + 102 + $1))/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    echo "cluster-kill.sh: gateway $1 not ready within 30 s; its log:" >&2
    cat "$work/gateway$1.log" >&2
    return 1
}
for i in 0 1 2; do gateway $i; done
for i in 0 1 2; do ready $i; done

# Gateway 0's applied events, sampled every 100 ms: the longest time it
# applied nothing while more was to come.
python3 - "127.0.0.1:$((base + 102))" >"$work/stall" <<'PY' &
import sys, time, urllib.request
url, last, since, longest, moved = f"http://{sys.argv[1]}/metrics", None, None, 0.0, False
while True:
    try:
        body = urllib.request.urlopen(url, timeout=1).read().decode()
    except Exception:
        break
    value = next((l.split()[1] for l in body.splitlines() if l.startswith("followermaze_events_delivered_total ")), None)
    now = time.monotonic()
    if value != last:
        if moved:  # not the wait before the first event
            longest = max(longest, now - since)
        moved, last, since = last is not None, value, now
    print(f"{longest:.2f}", flush=True)
    time.sleep(0.1)
PY
pids+=($!)

clients="127.0.0.1:$((base + 9)),127.0.0.1:$((base + 10)),127.0.0.1:$((base + 11))"
env eventListenerPort="$base" clientAddresses="$clients" resumable=true logInterval=0 \
    "$target/followermaze-verify" &
verifier=$!
sleep "$(awk "BEGIN { print $kill_after_ms / 1000 }")"
kill -KILL "${gateways[1]}"
echo "cluster-kill.sh: gateway 1 (clients :$((base + 10))) SIGKILLed ${kill_after_ms} ms into the run" >&2
killed_nats=()
if [ "$nats_nodes" = 3 ] && [ "$nats_kill" != none ]; then
    sleep "$(awk "BEGIN { print ($nats_kill_after_ms - $kill_after_ms) / 1000 }")"
    leader="$(nats_leader || echo 0)"
    case "$nats_kill" in
    leader) killed_nats=("$leader") ;;
    follower) killed_nats=($(((leader + 1) % 3))) ;;
    all) killed_nats=(0 1 2) ;;
    esac
    for i in "${killed_nats[@]}"; do kill -KILL "${nats_pids[i]}"; done
    for i in "${killed_nats[@]}"; do wait "${nats_pids[i]}" 2>/dev/null || true; done
    echo "cluster-kill.sh: NATS node(s) ${killed_nats[*]} SIGKILLed ${nats_kill_after_ms} ms into the run (the stream's leader was n$leader)" >&2
    if [ "$nats_kill" = all ]; then
        for i in 0 1 2; do nats_node "$i"; done
        echo "cluster-kill.sh: the NATS cluster started again" >&2
    fi
fi
status=0
wait "$verifier" || status=$?
if [ "$status" != 0 ]; then
    kept="$(mktemp -d -t cluster-kill-logs.XXXXXX)"
    cp "$work"/*.log "$kept"/ 2>/dev/null || true
    echo "cluster-kill.sh: the verifier failed; the roles' and NATS logs are in $kept" >&2
fi
stall="$(tail -n 1 "$work/stall" 2>/dev/null || echo "?")"

if [ "$nats_kill" != all ]; then
    for i in "${killed_nats[@]}"; do nats_node "$i"; done
fi
for i in "${killed_nats[@]}"; do
    nats_healthy "$i" || {
        echo "cluster-kill.sh: NATS node $i not healthy within 60 s; its log:" >&2
        tail -n 20 "$work/nats$i.log" >&2
        exit 1
    }
done
[ "${#killed_nats[@]}" -gt 0 ] && echo "cluster-kill.sh: NATS node(s) ${killed_nats[*]} back and healthy (stream caught up)" >&2
for i in 0 2; do
    peak="$(awk '/^VmHWM/ { print $2 " " $3 }' "/proc/${gateways[i]}/status" 2>/dev/null || echo "?")"
    echo "cluster-kill.sh: gateway $i peak RSS ${peak}" >&2
done
echo "cluster-kill.sh: gateway 0 applied nothing for at most ${stall} s in a row mid-run" >&2
gateway 1
ready 1 || exit 1
loaded="$(curl -s "127.0.0.1:$((base + 103))/metrics" | awk '/^followermaze_snapshots_loaded_total/ { print $2 }')"
echo "cluster-kill.sh: gateway 1 restarted and ready (snapshots loaded: ${loaded:-?})" >&2
exit "$status"
