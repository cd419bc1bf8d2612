#!/usr/bin/env bash
# cluster-kill.sh: a gateway SIGKILLed in the middle of a resumable run.
# Starts nats-server (JetStream, temporary store), a sequencer and three
# gateways on 127.0.0.1, waits until every gateway's /readyz says 200, runs
# the verifier with resumable clients spread over the three, SIGKILLs the
# second gateway `killAfterMs` into the run, restarts it once the verifier
# is done and waits for it to be ready again (from a snapshot), then stops
# everything. Exits with the verifier's status (0: every notification
# received, every resume verdict right), or 1 if the restarted gateway does
# not become ready within 30 s.
#
#   scripts/cluster-kill.sh                       # 10M events
#   totalEvents=3000000 offlineMs=3000 killswitchMs=1000 scripts/cluster-kill.sh
#
# Settings (environment): killAfterMs=1000 totalEvents=10000000
# killswitchMs=200 basePort=29090 (sequencer events; gateway i serves
# clients on basePort+9+i, metrics on basePort+102+i); natsNodes=1 (or 3: a
# three-node NATS cluster on 127.0.0.1, its three URLs given to every role
# with streamReplicas=3); any other verifier variable (offlineMs,
# randomSeed, ...) is passed to the verifier.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}/release"
kill_after_ms="${killAfterMs:-1000}"
base="${basePort:-29090}"
export totalEvents="${totalEvents:-10000000}" killswitchMs="${killswitchMs:-200}"

cargo build --release --quiet --manifest-path "$here/Cargo.toml" \
    -p followermaze -p followermaze-verify
name=cluster-kill.sh
# shellcheck source=scripts/nats-local.sh
source "$here/scripts/nats-local.sh"
node=(env natsUrl="$nats_url" streamReplicas="$stream_replicas" bindAddress=127.0.0.1 summaryIntervalSecs=0
      logLevel=warn "$target/followermaze")
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

clients="127.0.0.1:$((base + 9)),127.0.0.1:$((base + 10)),127.0.0.1:$((base + 11))"
env eventListenerPort="$base" clientAddresses="$clients" resumable=true logInterval=0 \
    "$target/followermaze-verify" &
verifier=$!
sleep "$(awk "BEGIN { print $kill_after_ms / 1000 }")"
kill -KILL "${gateways[1]}"
echo "cluster-kill.sh: gateway 1 (clients :$((base + 10))) SIGKILLed ${kill_after_ms} ms into the run" >&2
status=0
wait "$verifier" || status=$?

gateway 1
ready 1 || exit 1
loaded="$(curl -s "127.0.0.1:$((base + 103))/metrics" | awk '/^followermaze_snapshots_loaded_total/ { print $2 }')"
echo "cluster-kill.sh: gateway 1 restarted and ready (snapshots loaded: ${loaded:-?})" >&2
exit "$status"
