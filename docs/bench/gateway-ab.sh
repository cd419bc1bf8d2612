#!/usr/bin/env bash
# gateway-ab.sh BINARY TAG: a fresh cluster (one nats-server, a sequencer and
# one gateway, all from BINARY, on loopback) and one classic flood through
# it: the verifier's events to the sequencer, its clients on the gateway.
# Prints one line: tag, the gateway's and the sequencer's CPU (utime + stime
# from /proc), the gateway's peak RSS (KiB), the verifier's time, 1 if it
# passed. totalEvents (default 5000000) sizes the flood. Alternate two
# binaries for an A/B:
#   for i in 1 2 3 4 5; do docs/bench/gateway-ab.sh OLD before; docs/bench/gateway-ab.sh NEW after; done
set -u
bin=$1; tag=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
verify=${VERIFY:-${CARGO_TARGET_DIR:-$here/target}/release/followermaze-verify}
export PATH=$PATH:/usr/sbin
name=gateway-ab.sh
# shellcheck source=scripts/nats-local.sh
source "$here/scripts/nats-local.sh"
export natsUrl="$nats_url" streamReplicas="$stream_replicas" bindAddress=127.0.0.1
# Below the ephemeral range (32768+), where a free port can be taken meanwhile.
ep=$((20000 + RANDOM % 5000)); cp=$((ep + 5001))
role=sequencer eventListenerPort=$ep metricsPort=0 summaryIntervalSecs=0 "$bin" 2>"$work/sequencer.log" &
sequencer=$!; pids+=($sequencer)
role=gateway clientListenerPort=$cp metricsPort=0 webPort=0 summaryIntervalSecs=0 "$bin" 2>"$work/gateway.log" &
gateway=$!; pids+=($gateway)
for _ in $(seq 200); do
  (echo >/dev/tcp/127.0.0.1/$cp) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/$ep) 2>/dev/null && break
  sleep 0.05
done
out=$(env eventListenerPort=$ep clientListenerPort=$cp logInterval=0 totalEvents="${totalEvents:-5000000}" "$verify" 2>&1)
cpu() { awk -v tck="$(getconf CLK_TCK)" '{print ($14 + $15) / tck}' "/proc/$1/stat"; }
echo "$tag gateway_cpu=$(cpu $gateway) sequencer_cpu=$(cpu $sequencer)" \
  "gateway_hwm_kb=$(awk '/VmHWM/{print $2}' /proc/$gateway/status)" \
  "$(echo "$out" | grep -o 'in [0-9.]* seconds') $(echo "$out" | grep -c 'ALL NOTIF')"
