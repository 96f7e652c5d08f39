#!/usr/bin/env bash
# make demo: a tiny model (made once), split, verified against transformers, then served by `remoe up`
# (gateway + backbone + two expert services as local processes) and queried through the SDK's CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=${DEMO_DIR:-.cache/demo}
PORT=${DEMO_PORT:-50051}

if [ ! -f "$DEMO/mixtral/config.json" ]; then
  $BIN/remoe tiny-model --arch mixtral --layers 4 --experts 8 --out "$DEMO/mixtral"
fi
rm -rf "$DEMO/mixtral-split"
$BIN/remoe split "$DEMO/mixtral" --out "$DEMO/mixtral-split"
$BIN/remoe inspect "$DEMO/mixtral-split"
echo "--- verify: the split, under a 2-expert budget, against transformers' own generate"
$BIN/remoe verify "$DEMO/mixtral" --split "$DEMO/mixtral-split" --expert-budget 200000

echo "--- remoe up: gateway, backbone, two expert services; half of each layer's experts in functions"
$BIN/remoe up --model "$DEMO/mixtral-split" --port "$PORT" --run-dir "$DEMO/run" --remote-ratio 0.5 > "$DEMO/up.log" 2>&1 &
UP=$!
trap 'kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  grep -q "gateway listening" "$DEMO/up.log" && break
  kill -0 $UP 2>/dev/null || { cat "$DEMO/up.log"; exit 1; }
  sleep 0.5
done
cat "$DEMO/up.log"
echo "--- remoe generate (random weights: the text is noise; it is exactly transformers' noise)"
$BIN/remoe generate --address "127.0.0.1:$PORT" --max-new-tokens 24 "The quick brown fox"
echo "--- again: the first request's TTFT included the functions' cold starts; now they are warm"
$BIN/remoe generate --address "127.0.0.1:$PORT" --max-new-tokens 24 "The quick brown fox"
echo "--- remoe status"
$BIN/remoe status --address "127.0.0.1:$PORT"
