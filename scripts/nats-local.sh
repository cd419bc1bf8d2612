# nats-local.sh: sourced by the cluster scripts. Checks that nats-server is
# installed, makes a temporary directory ($work), starts nats-server with
# JetStream on a free loopback port storing in it ($nats_url), and on exit
# (or Ctrl-C) stops every process whose pid is in $pids and removes $work.
#
#   name=cluster.sh; source "$here/scripts/nats-local.sh"

command -v nats-server >/dev/null 2>&1 || {
    echo "${name:-$0}: nats-server is not installed (apt-get install -y nats-server)" >&2
    exit 2
}

work="$(mktemp -d -t followermaze-cluster.XXXXXX)"
pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup INT TERM EXIT

nats_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/store" >"$work/nats.log" 2>&1 &
pids+=($!)
nats_url="nats://127.0.0.1:$nats_port"
