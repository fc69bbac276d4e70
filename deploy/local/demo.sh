#!/usr/bin/env bash
# make demo: the main job on one machine. Synthetic shards, one coordinator,
# two CPU workers; the tiny LaVIT stage-1 run (the tokenizer) then the tiny
# stage-2 run (the LM on its tokens), trained data-parallel over the ring;
# progress on screen, MODEL.md's "it learned" checks at the end, everything
# stopped cleanly. Outputs: demo-out/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
coord="$root/bin/lavit-coord"
worker="$root/bin/lavit-worker"
out="$root/demo-out"
export LAVIT_TORCH_LIB="$root/bin/liblavit_torch.so"

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
started=$(date +%s)

step "lavit-coord shards synth  (MODEL.md's data set: 5000 train and 256 eval samples, png + txt + json)"
"$coord" shards synth --out "file://$out/data/train" --samples 5000 --per-shard 500 2>/dev/null | tail -1
"$coord" shards synth --out "file://$out/data/eval" --split eval --samples 256 --per-shard 256 2>/dev/null | tail -1

step "lavit-coord up  (one-node raft in demo-out/coord, NATS 127.0.0.1:4222 and HTTPS 127.0.0.1:8080, both TLS; runs may use files under demo-out only)"
"$coord" up --id coord-1 --data-dir "$out/coord" --file-root "$out" >"$out/coord.log" 2>&1 &
pids+=($!)
coord_pid=$!
# /readyz is a probe: like Kubernetes, poll it without verifying the certificate.
for _ in $(seq 1 100); do
  curl -fsSk https://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsSk https://127.0.0.1:8080/readyz >/dev/null || { echo "demo: coordinator not ready; see $out/coord.log" >&2; exit 1; }
# Then once verified, with the cluster CA (derived from the admin token);
# the coordinators' certificates name lavit-coordinator.
"$coord" ca --data-dir "$out/coord" >"$out/ca.pem"
curl -fsS --cacert "$out/ca.pem" --resolve lavit-coordinator:8080:127.0.0.1 https://lavit-coordinator:8080/readyz >/dev/null ||
  { echo "demo: the coordinator's certificate did not verify against $out/ca.pem" >&2; exit 1; }
echo "ready"
export LAVIT_DATA_DIR="$out/coord"   # the CLI and the workers read the join token there

step "lavit-worker join  (two CPU workers, w1 and w2)"
threads=$(( $(nproc) / 2 )); [ "$threads" -ge 1 ] || threads=1   # the two share this host's cores
"$worker" join --id w1 --device cpu --threads "$threads" >"$out/w1.log" 2>&1 &
w1=$!; pids+=($w1)
"$worker" join --id w2 --device cpu --threads "$threads" >"$out/w2.log" 2>&1 &
w2=$!; pids+=($w2)
for _ in $(seq 1 150); do
  n=$("$coord" workers ls --json | grep -c '"state": "IDLE"' || true)
  [ "$n" -ge 2 ] && break
  sleep 0.2
done
"$coord" workers ls

# json_field FIELD: the first "FIELD": value of stdin's JSON (no jq needed).
# It reads all of stdin: a reader that stops early (grep -m1) can kill the
# writer with SIGPIPE, which pipefail turns into a failed demo.
json_field() { awk -v key="\"$1\":" 'index($0, key) && !found { sub(/^[^:]*: *"?/, ""); sub(/"?,?$/, ""); print; found = 1 }'; }

step "lavit-coord run submit  (configs/tiny-stage1.yaml, then configs/tiny-stage2.yaml using its tokenizer)"
run1=$("$coord" run submit -f configs/tiny-stage1.yaml --set min_workers=2 --json | json_field id)
run2=$("$coord" run submit -f configs/tiny-stage2.yaml --set min_workers=2 --set "tokenizer.from=$run1" --json | json_field id)
echo "stage 1: run $run1; stage 2: run $run2 (queued: it waits for $run1's tokenizer)"
"$coord" run ls

# follow ID: print progress until the run ends; fail the demo if it fails.
follow() {
  local id=$1 last=""
  while true; do
    local js state line
    js=$("$coord" run show "$id" --json)
    state=$(echo "$js" | json_field state)
    line=$(printf '%s  %-9s step %s/%s  loss %s  %s samples/s' "$id" "$state" \
      "$(echo "$js" | json_field step)" "$(echo "$js" | json_field total_steps)" \
      "$(echo "$js" | json_field loss | cut -c1-6)" "$(echo "$js" | json_field samples_per_s | cut -c1-6)")
    [ "$line" != "$last" ] && echo "$line"
    last=$line
    case "$state" in
      COMPLETED) return 0 ;;
      FAILED|CANCELLED) "$coord" run show "$id"; echo "demo: run $id $state" >&2; return 1 ;;
    esac
    sleep 2
  done
}

step "training stage 1 (the dynamic visual tokenizer), data-parallel on w1 + w2"
follow "$run1"
"$coord" run show "$run1"

step "training stage 2 (the unified LM over image and text tokens), data-parallel on w1 + w2"
follow "$run2"
"$coord" run show "$run2"

step "lavit-coord ckpt ls  (committed checkpoints: every 200/400 steps and the last step; the manifest is written last and committed through raft)"
"$coord" ckpt ls "$run1"
"$coord" ckpt ls "$run2"
"$coord" ckpt verify "$run2" 800
"$coord" ckpt export "$run2" 800 --out "$out/lm.safetensors"

step "MODEL.md's \"it learned\" checks (measured by rank 0 on the eval split)"
"$coord" eval "$run1" "$run2" | tee "$out/it-learned.txt"

step "stopping the workers (SIGTERM: they deregister) and the coordinator"
kill -TERM "$w1" "$w2"
wait "$w1" "$w2" || true
kill -TERM "$coord_pid"
wait "$coord_pid" || true
pids=()

step "done in $(( $(date +%s) - started )) s"
echo "outputs in $out:"
echo "  data/train, data/eval      the synthetic shards and their manifests"
echo "  checkpoints/$run1/final   the tokenizer (config.json, state.lvst)"
echo "  checkpoints/$run2/final   the LM"
echo "  checkpoints/RUN/step-N      committed checkpoints (parts + manifest.json)"
echo "  lm.safetensors             the LM's weights, exported from its last checkpoint"
echo "  it-learned.txt             the checks above"
echo "  coord.log, w1.log, w2.log  logs; coord/ holds the raft data"
