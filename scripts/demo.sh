#!/usr/bin/env bash
# make demo: a small MoE trained on real text (made once, about 4 minutes on 2 cores), split, verified
# against transformers, then served by `remoe up` (gateway, backbone, two expert services, functions for half
# of each layer's experts, the predictor) and queried through the SDK's CLI; then profiled and planned.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=${DEMO_DIR:-.cache/demo}
PORT=${DEMO_PORT:-50051}
HTTP_PORT=${DEMO_HTTP_PORT:-8000}
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
$BIN/remoe up --model "$MODEL-split" --port "$PORT" --run-dir "$DEMO/run" --remote-ratio 0.5 --http-port "$HTTP_PORT" > "$DEMO/up.log" 2>&1 &
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
echo "--- again: the functions started with the backbone, each forked from a pre-imported runtime template;"
echo "    a batch whose function is not serving yet is computed on an expert service (no token waits for it)"
$BIN/remoe generate --address "127.0.0.1:$PORT" --max-new-tokens 32 "You will"
echo "--- remoe status: each function instance's calls, and the batches each expert service and function computed"
$BIN/remoe status --address "127.0.0.1:$PORT"
echo "--- the same gateway speaks OpenAI's HTTP API (the official openai client here) and serves Prometheus metrics"
$BIN/python - "$HTTP_PORT" "$(basename "$MODEL")-split" <<'PY'
import sys, urllib.request

import openai

port, model = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
try:
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "You will"}], max_tokens=16)
    print(f"chat: {chat.choices[0].message.content!r} ({chat.usage.completion_tokens} tokens)")
except openai.BadRequestError as e:  # a model trained before the tiny tokenizers had a chat template
    print(f"chat: {e.body['message']}")
print("streamed: ", end="")
for chunk in client.completions.create(model=model, prompt="You will", max_tokens=16, temperature=0, stream=True):
    print(chunk.choices[0].text, end="", flush=True)
print()
metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
wanted = ("remoe_gateway_requests_total", "remoe_gateway_ttft_seconds_count", "remoe_gateway_completion_tokens_total")
print("\n".join(line for line in metrics.splitlines() if line.startswith(wanted)))
PY

echo "--- the scheduler: this machine's speeds for the model (remoe profile), then one prompt's cheapest plan"
kill -INT $UP 2>/dev/null; wait $UP 2>/dev/null || true
trap - EXIT
$BIN/remoe profile --model "$MODEL-split" --out "$DEMO/profile.json" --quick -q
$BIN/remoe plan --model "$MODEL-split" --profile "$DEMO/profile.json" --prompt "You will" --slo-ttft 200 || true
echo "(serve with plans per request: remoe up --model $MODEL-split --profile $DEMO/profile.json --slo-ttft 200)"
