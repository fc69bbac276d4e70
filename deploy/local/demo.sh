#!/usr/bin/env bash
# make demo: one coordinator and two CPU workers on this machine. The
# workers join, are listed, and leave cleanly; then the coordinator stops.
# (Training joins the demo when the trainer lands.)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
coord="$root/bin/lavit-coord"
worker="$root/bin/lavit-worker"
out="$root/demo-out"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

for port in 4222 6222 7000 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is in use (another lavit-coord?); stop it and run make demo again" >&2
    exit 1
  fi
done

rm -rf "$out"
mkdir -p "$out"
step() { printf '\n==> %s\n' "$*"; }

step "lavit-coord up  (one-node raft in demo-out/coord, NATS 127.0.0.1:4222, HTTP 127.0.0.1:8080)"
"$coord" up --id coord-1 --data-dir "$out/coord" >"$out/coord.log" 2>&1 &
pids+=($!)
coord_pid=$!
for _ in $(seq 1 100); do
  curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS http://127.0.0.1:8080/readyz || { echo "demo: coordinator not ready; see $out/coord.log" >&2; exit 1; }
export LAVIT_DATA_DIR="$out/coord"   # the CLI and the workers read the join token there

step "lavit-worker join  (two CPU workers: w1, w2)"
"$worker" join --id w1 --device cpu >"$out/w1.log" 2>&1 &
w1=$!; pids+=($w1)
"$worker" join --id w2 --device cpu >"$out/w2.log" 2>&1 &
w2=$!; pids+=($w2)
for _ in $(seq 1 100); do
  n=$("$coord" workers ls --json | grep -c '"state": "IDLE"' || true)
  [ "$n" -ge 2 ] && break
  sleep 0.2
done

step "lavit-coord status"
"$coord" status
step "lavit-coord workers ls"
"$coord" workers ls

step "stopping the workers (SIGTERM: they deregister)"
kill -TERM "$w1" "$w2"
wait "$w1" "$w2"
"$coord" workers ls

step "stopping the coordinator (SIGTERM)"
kill -TERM "$coord_pid"
wait "$coord_pid"
pids=()

step "done"
echo "logs: $out/coord.log, $out/w1.log, $out/w2.log; raft data: $out/coord"
