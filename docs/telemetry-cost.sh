#!/usr/bin/env bash
# What exporting traces costs a host (issue 25), measured apart from everything else: three
# `warren run` processes serve the `echo` plugin — traces off, exported to a live OTLP/HTTP
# sink (a small Python server, a process of its own), and aimed at a collector that is gone —
# and `warren bench` loads them in alternating slices of one run as a goamqp client would.
# Prints the bench table (throughput, ratio to `off`) and each host's own CPU (user + system,
# from /proc) per answered request.
#
#   cargo build --release -p warren --bin warren && target/release/warren build
#   bash docs/telemetry-cost.sh [IN_FLIGHT=100] [SECONDS=60] [SLICES=12]
#
# RabbitMQ must answer at 127.0.0.1:5672 (WARREN_BROKER_URL overrides it). The services are
# named telcost-*; their queues and exchanges are deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
in_flight=${1:-100} seconds=${2:-60} slices=${3:-12}
warren=$PWD/target/release/warren
work=$(mktemp -d /tmp/warren-telcost.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port) gone_port=$(free_port)

cat >"$work/sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    for variant in off on gone; do
        rabbitmqctl -q delete_queue "telcost-$variant.direct.exchange.request.queue" >/dev/null 2>&1 || true
        for exchange in direct.exchange.request headers.exchange.response; do # rabbitmqctl has no delete_exchange
            rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"telcost-$variant.$exchange\">>), false, <<\"telemetry-cost\">>)." >/dev/null 2>&1 || true
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT
python3 "$work/sink.py" "$sink_port" & pids+=($!)

declare -A pid
for variant in off on gone; do
    case $variant in
        off) telemetry="" ;;
        on) telemetry=$'[telemetry]\notlp_endpoint = "http://127.0.0.1:'"$sink_port"'"' ;;
        gone) telemetry=$'[telemetry]\notlp_endpoint = "http://127.0.0.1:'"$gone_port"'"' ;;
    esac
    cat >"$work/$variant.toml" <<TOML
[service]
name = "telcost-$variant"
plugins = "$PWD/target/plugins"
[[request]]
routing_key = "echo"
plugin = "echo"
$telemetry
TOML
    "$warren" run --config "$work/$variant.toml" >"$work/$variant.log" 2>&1 &
    pid[$variant]=$!
    pids+=($!)
done
sleep 5
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for variant in off on gone; do before[$variant]=$(cpu "${pid[$variant]}"); done
"$warren" bench telcost-off echo '{"data":"hello"}' --inflight "$in_flight" --duration "$seconds" \
    --slices "$slices" --against telcost-on,telcost-gone 2>/dev/null | tee "$work/bench.txt"
ticks=$(getconf CLK_TCK)
for variant in off on gone; do
    requests=$(awk -v s="telcost-$variant" '$1 == s { print $2 }' "$work/bench.txt")
    used=$(( $(cpu "${pid[$variant]}") - ${before[$variant]} ))
    python3 -c "print(f'telcost-$variant: host CPU {$used / $ticks * 1e6 / $requests:.1f} µs per request')"
done
