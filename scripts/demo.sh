#!/usr/bin/env bash
# make demo: a small MoE trained on real text (made once, about 4 minutes on 2 cores), split, verified
# against transformers, then served by `remoe up` (gateway, backbone, two expert services, functions for half
# of each layer's experts, the predictor) and queried through the SDK's CLI; then profiled and planned.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=${DEMO_DIR:-.cache/demo}
PORT=${DEMO_PORT:-50051}
MODEL=$DEMO/trained

if [ ! -f "$MODEL/config.json" ]; then
  echo "--- once: a prompt corpus from Debian's text packages, and a 4-minute training run on it"
  $BIN/remoe corpus build --out "$DEMO/corpus" --max-prompts 3000 -q
  $BIN/remoe train-tiny --corpus "$DEMO/corpus/train.jsonl" --out "$MODEL" --steps 500 --max-minutes 4
fi
rm -rf "$MODEL-split"
$BIN/remoe split "$MODEL" --out "$MODEL-split"
$BIN/remoe inspect "$MODEL-split"
echo "--- verify: the split, under a 2-expert budget, against transformers' own generate"
$BIN/remoe verify "$MODEL" --split "$MODEL-split" --expert-budget 1600000

echo "--- remoe up: gateway, backbone, two expert services; half of each layer's experts in functions"
$BIN/remoe up --model "$MODEL-split" --port "$PORT" --run-dir "$DEMO/run" --remote-ratio 0.5 > "$DEMO/up.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  grep -q "gateway listening" "$DEMO/up.log" && break
  kill -0 $UP 2>/dev/null || { cat "$DEMO/up.log"; exit 1; }
  sleep 0.5
done
cat "$DEMO/up.log"
echo "--- remoe generate (a few minutes of training: text that looks like text, not sense)"
$BIN/remoe generate --address "127.0.0.1:$PORT" --max-new-tokens 32 "You will"
echo "--- again: the first request's TTFT included the functions' cold starts; now they are warm"
$BIN/remoe generate --address "127.0.0.1:$PORT" --max-new-tokens 32 "You will"
echo "--- remoe status"
$BIN/remoe status --address "127.0.0.1:$PORT"

echo "--- the scheduler: this machine's speeds for the model (remoe profile), then one prompt's cheapest plan"
kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null || true
trap - EXIT
$BIN/remoe profile --model "$MODEL-split" --out "$DEMO/profile.json" --quick -q
$BIN/remoe plan --model "$MODEL-split" --profile "$DEMO/profile.json" --prompt "You will" --slo-ttft 200 || true
echo "(serve with plans per request: remoe up --model $MODEL-split --profile $DEMO/profile.json --slo-ttft 200)"
