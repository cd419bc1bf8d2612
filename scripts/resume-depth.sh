#!/usr/bin/env bash
# resume-depth.sh: how long a resume from far back takes on another gateway
# while the cluster runs at full speed. Starts nats-server, a sequencer and
# two gateways on 127.0.0.1; a resumable probe client (user `probeUser`)
# opens its session on gateway 0 while the verifier floods the sequencer
# (its clients on gateway 0, not resumable); `awaySecs` after the probe's
# last line it resumes on gateway 1 with the position it had, and the
# script prints the verdict, the time from the hello to the verdict, the
# lines owed that came with it, and gateway 1's peak RSS. Gateway 1 never
# served the probe, so the resume is planned from the stream: from the edge
# log if it reaches back, else from a snapshot.
#
#   scripts/resume-depth.sh                        # 20 s back
#   awaySecs=5 totalEvents=20000000 scripts/resume-depth.sh
#
# Settings (environment): awaySecs=20 totalEvents=60000000 (enough to
# flood for longer than awaySecs) probeUser=1 basePort=33090 natsNodes=1
# (or 3); any other verifier variable is passed to the verifier.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$here/target}/release"
away="${awaySecs:-20}"
user="${probeUser:-1}"
base="${basePort:-33090}"
export totalEvents="${totalEvents:-60000000}"

cargo build --release --quiet --manifest-path "$here/Cargo.toml" \
    -p followermaze -p followermaze-verify
name=resume-depth.sh
# shellcheck source=scripts/nats-local.sh
source "$here/scripts/nats-local.sh"
node=(env natsUrl="$nats_url" streamReplicas="$stream_replicas" bindAddress=127.0.0.1
      summaryIntervalSecs=0 logLevel=warn "$target/followermaze")
env role=sequencer eventListenerPort="$base" metricsPort=$((base + 101)) "${node[@]}" \
    2>"$work/sequencer.log" &
pids+=($!)
gateways=()
for i in 0 1; do
    env role=gateway clientListenerPort=$((base + 9 + i)) metricsPort=$((base + 102 + i)) webPort=0 \
        "${node[@]}" >/dev/null 2>>"$work/gateway$i.log" &
    gateways[i]=$!
    pids+=($!)
done
for i in 0 1; do
    for _ in $(seq 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$((base + 102 + i))/readyz")" = 200 ] && break
        sleep 0.1
    done
done

# The probe: its session on gateway 0, then away, then a resume on gateway 1.
python3 - "$base" "$user" "$away" >"$work/probe" 2>&1 <<'PY' &
import socket, sys, time
base, user, away = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
first = socket.create_connection(("127.0.0.1", base + 9))
first.sendall(f"{user}||0\r\n".encode())
data = b""
while b"\n" not in data:
    data += first.recv(4096)
verdict, _, data = data.partition(b"\n")
stream = verdict.decode().split("|")[1]
# Lines until 2 s after the first event: the position is the last one's.
first.settimeout(0.2)
started, after = None, 0
while started is None or time.monotonic() - started < 2.0:
    try:
        chunk = first.recv(65536)
    except socket.timeout:
        continue
    if not chunk:
        break
    started = started or time.monotonic()
    data += chunk
    *lines, data = data.split(b"\n")
    for line in lines:
        if line and not line.startswith(b"#"):
            after = int(line.split(b"|")[0])
first.close()
print(f"probe: session on gateway 0 left at position {after}; away {away:.0f} s", flush=True)
time.sleep(away)
second = socket.create_connection(("127.0.0.1", base + 10))
hello = time.monotonic()
second.sendall(f"{user}|{stream}|{after}\r\n".encode())
data = b""
while b"\n" not in data:
    chunk = second.recv(65536)
    if not chunk:
        print("probe: closed before a verdict"); sys.exit(1)
    data += chunk
took = time.monotonic() - hello
verdict, _, rest = data.partition(b"\n")
print(f"probe: {verdict.decode().strip()} in {took * 1000:.0f} ms from the hello", flush=True)
second.settimeout(1.0)
owed = rest.count(b"\n")
try:
    while True:
        chunk = second.recv(1 << 20)
        if not chunk:
            break
        owed += chunk.count(b"\n")
except socket.timeout:
    pass
print(f"probe: {owed} lines after the verdict", flush=True)
sys.exit(0 if verdict.startswith(b"#OK") else 1)
PY
probe=$!
pids+=($!)

env eventListenerPort="$base" clientListenerPort=$((base + 9)) logInterval=0 timeout=60000 \
    "$target/followermaze-verify" >"$work/verifier" 2>&1 &
verifier=$!
pids+=($!)
status=0
wait "$probe" || status=$?
cat "$work/probe" >&2
peak="$(awk '/^VmHWM/ { print $2 " " $3 }' "/proc/${gateways[1]}/status")"
echo "resume-depth.sh: gateway 1 peak RSS $peak" >&2
kill "$verifier" 2>/dev/null || true
exit "$status"
