#!/usr/bin/env bash
# Classic 10M, before against after, alternating, 6 pairs: BEFORE_SERVER and
# BEFORE_VERIFY name the old binaries, AFTER_SERVER and AFTER_VERIFY the new
# (default: this tree's release builds). One line a run: wall (the
# verifier's banner), the verifier's CPU, the server's CPU, and 1 if it passed.
run() { # label server verifier
  local ep=$((24000 + RANDOM % 3000)) cp
  cp=$((ep + 3001))
  env eventListenerPort=$ep clientListenerPort=$cp metricsPort=0 webPort=0 summaryIntervalSecs=0 $2 2>/dev/null &
  local spid=$!
  for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$ep) 2>/dev/null && break; sleep 0.05; done
  local out; out=$( { /usr/bin/time -f "VCPU %U %S" env eventListenerPort=$ep clientListenerPort=$cp logInterval=0 $3; } 2>&1 )
  local stat=($(cat /proc/$spid/stat)); local tck=$(getconf CLK_TCK)
  local scpu=$(awk "BEGIN{print (${stat[13]}+${stat[14]})/$tck}")
  kill $spid; wait $spid 2>/dev/null
  local wall=$(echo "$out" | grep -o "in [0-9.]* seconds" | grep -o "[0-9.]*")
  local vcpu=$(echo "$out" | awk '/^VCPU/{print $2+$3}')
  echo "$1 wall=$wall verifier_cpu=$vcpu server_cpu=$scpu $(echo "$out" | grep -c 'ALL NOTIFICATIONS')"
}
for n in 1 2 3 4 5 6; do
  run before ${BEFORE_SERVER:?} ${BEFORE_VERIFY:?}
  run after ${AFTER_SERVER:-target/release/followermaze} ${AFTER_VERIFY:-target/release/followermaze-verify}
done
