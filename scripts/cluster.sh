#!/usr/bin/env bash
# cluster.sh: a followermaze cluster on this machine, all on 127.0.0.1:
# nats-server with JetStream (a free port, a temporary store), a sequencer
# (events on :9090) and three gateways (clients on :9099, :9100, :9101).
# Runs until Ctrl-C, then stops everything it started.
#
#   scripts/cluster.sh                  # then, in another terminal:
#   ./followermaze.sh                   # events -> sequencer, clients -> first gateway
#   clientListenerPort=9100 ./followermaze.sh
#   clientAddresses=127.0.0.1:9099,127.0.0.1:9100 resumable=true killswitchMs=200 ./followermaze.sh
#
# Settings (environment): gateways=3 eventListenerPort=9090
# clientListenerPort=9099 (gateway i gets +i) metricsPort=9191 (sequencer;
# gateway i gets +1+i) webPort=9080 (gateway i gets +i; 0 = none);
# natsNodes=1 (or 3: a three-node NATS cluster
# routed on 127.0.0.1, the roles given its three URLs and
# streamReplicas=3); any other followermaze variable is passed through.
#
#   natsNodes=3 scripts/cluster.sh      # a replicated stream; kill a
#                                       # nats-server and the cluster carries on
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-$here/target}/release/followermaze"
gateways="${gateways:-3}"
events_port="${eventListenerPort:-9090}"
clients_port="${clientListenerPort:-9099}"
metrics_port="${metricsPort:-9191}"
web_port="${webPort:-9080}"

cargo build --release --quiet --manifest-path "$here/Cargo.toml" --bin followermaze
name=cluster.sh
# shellcheck source=scripts/nats-local.sh
source "$here/scripts/nats-local.sh"
export natsUrl="$nats_url" streamReplicas="$stream_replicas" bindAddress=127.0.0.1

role=sequencer eventListenerPort="$events_port" metricsPort="$metrics_port" "$bin" &
pids+=($!)
for ((i = 0; i < gateways; i++)); do
    role=gateway clientListenerPort=$((clients_port + i)) metricsPort=$((metrics_port + 1 + i)) \
        webPort=$((web_port == 0 ? 0 : web_port + i)) "$bin" &
    pids+=($!)
done

echo "cluster.sh: nats on $natsUrl ($nats_nodes node(s), stores under $work," \
     "streamReplicas=$streamReplicas); sequencer events :$events_port;" \
     "gateways clients :$clients_port..:$((clients_port + gateways - 1));" \
     "readiness: curl 127.0.0.1:$((metrics_port + 1))/readyz. Ctrl-C stops all." >&2
# Any process ending ends the cluster (a second sequencer, a busy port...).
wait -n "${pids[@]}"
