#!/usr/bin/env bash
# perf3-bench.sh BINARY MODE TAG (MODE: classic, fanout, fanout-resumable, paced): one fresh server per run on free ports,
# the verifier against it; prints one line: tag mode wall cpu_s hwm_kb p50 p99 status
# VERIFY (default: this tree's release followermaze-verify), SERVER_ENV,
# LOG_DIR (default $TMPDIR/perf3-runs: each run's verifier and server logs),
# SERVER_PIN / VERIFY_PIN (a command to run each under, e.g. "taskset -c 0").
set -u
bin=$1; mode=$2; tag=$3
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
verify=${VERIFY:-${CARGO_TARGET_DIR:-$here/target}/release/followermaze-verify}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ep=$(free_port); cp=$(free_port)
while [ "$cp" = "$ep" ]; do cp=$(free_port); done
logs=${LOG_DIR:-${TMPDIR:-/tmp}/perf3-runs}
mkdir -p "$logs"
log=$logs/$tag-$mode-$$.log
${SERVER_PIN:-} env ${SERVER_ENV:-} eventListenerPort=$ep clientListenerPort=$cp metricsPort=0 webPort=0 summaryIntervalSecs=0 $bin 2>$log.server &
spid=$!
for i in $(seq 100); do
  (echo > /dev/tcp/127.0.0.1/$ep) 2>/dev/null && break; sleep 0.05
done
case $mode in
  classic) env=() ;;
  fanout) env=(profile=fanout totalEvents=3000000) ;;
  fanout-resumable) env=(profile=fanout totalEvents=3000000 resumable=true) ;;
  paced) env=(rate=100000 totalEvents=1000000) ;;
esac
start=$(date +%s.%N)
${VERIFY_PIN:-} env eventListenerPort=$ep clientListenerPort=$cp "${env[@]}" $verify >$log 2>&1
status=$?
end=$(date +%s.%N)
read -r ut st < <(awk '{print $14, $15}' /proc/$spid/stat)
hwm=$(awk "/VmHWM/{print \$2}" /proc/$spid/status); rss=$(grep -E "RssAnon|RssFile" /proc/$spid/status | awk "{printf \"%s%s \", \$1, \$2}"); ctx=$(cat /proc/$spid/task/*/status | awk "/voluntary_ctxt/{s[\$1]+=\$2} END{printf \"vol=%d invol=%d\", s[\"voluntary_ctxt_switches:\"], s[\"nonvoluntary_ctxt_switches:\"]}")
kill $spid; wait $spid 2>/dev/null
tck=$(getconf CLK_TCK)
cpu=$(echo "scale=3; ($ut+$st)/$tck" | bc)
wall=$(echo "$end - $start" | bc)
lat=$(grep -io 'p50[^,]*\|p99[^,]*' $log | tr '\n' ' ')
echo "$tag $mode wall=$wall cpu=$cpu ut=$ut st=$st hwm=$hwm status=$status $ctx $rss $lat"
