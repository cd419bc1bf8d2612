#!/usr/bin/env bash
# followermaze.sh: check a running follower-maze server, like the classic
# script did with its jar.
#
# Builds the Rust verifier (release) when its sources changed, then runs it
# against the server that is already running. Settings are the classic
# environment variables, with the classic defaults (see README.md, "Checking a server"):
#
#   eventListenerPort=9090 clientListenerPort=9099 serverHost=127.0.0.1
#   totalEvents=10000000 concurrencyLevel=100 numberOfUsers=1000
#   randomSeed=666 timeout=20000 maxEventSourceBatchSize=100
#   logInterval=1000 logLevel=info profile=classic rate=0 lineEndings=exact
#
# and for resumable sessions under fault injection (README.md, "Resumable
# runs"):
#
#   resumable=false killswitchMs=0 offlineMs=0
#   resumeWindowSecs=30 resumeBufferBytes=1048576   (the server's own names)
#
# Nothing is passed by hand: the script execs the verifier, which inherits
# this environment whole, so every variable set for the script reaches it
# unchanged. The two it shares with the server (resumeWindowSecs,
# resumeBufferBytes) keep the server's names: export them once for both.
#
#   resumable=true killswitchMs=200 totalEvents=1000000 ./followermaze.sh
#
# Exit status: 0 all notifications received; 1 something went wrong;
# 2 nothing listens on the ports, or a setting is invalid.
#
# `./followermaze.sh sink` serves both ports and discards everything instead
# (to measure the verifier's own ceiling; see README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${CARGO_TARGET_DIR:-$here/target}/release/followermaze-verify"

if command -v cargo >/dev/null 2>&1; then
    cargo build --release --quiet -p followermaze-verify --manifest-path "$here/Cargo.toml"
elif [ ! -x "$bin" ]; then
    echo "followermaze.sh: cargo is not installed and $bin is not built" >&2
    exit 2
fi

exec "$bin" "$@"
