#!/usr/bin/env bash
# make bench-predictor: SPS forecast accuracy on a trained and a random-init model, and predict latency
# with 5,000 stored prompts. Builds what data/ lacks first: the corpus (seconds) and the trained model
# (remoe train-tiny, up to 18 minutes on 2 cores). Results: docs/results/predictor-*.{json,md,png} and
# docs/results/predictor_latency.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DATA=${DATA_DIR:-data}
OUT=${OUT_DIR:-docs/results}
TRAINED=$DATA/models/trained-qwen3
RANDOM_INIT=$DATA/models/random-qwen3

[ -f "$DATA/corpus/train.jsonl" ] || $BIN/remoe corpus build --out "$DATA/corpus"
[ -f "$TRAINED/config.json" ] || $BIN/remoe train-tiny --corpus "$DATA/corpus/train.jsonl" --out "$TRAINED" \
  --steps 2400 --max-minutes 18
# Same shape as the trained one (qwen3_moe, 4 layers, 8 experts, top-2, hidden 256), never trained.
[ -f "$RANDOM_INIT/config.json" ] || $BIN/remoe tiny-model --arch qwen3_moe --layers 4 --experts 8 --top-k 2 \
  --hidden 256 --vocab 4096 --out "$RANDOM_INIT"

for model in trained random; do
  dir=$TRAINED; [ $model = random ] && dir=$RANDOM_INIT
  $BIN/remoe predictor eval --model "$dir" --train "$DATA/corpus/train.jsonl" --test "$DATA/corpus/test.jsonl" \
    --out "$OUT" --name "predictor-$model"
done
$BIN/python bench/predictor_latency.py --model "$TRAINED" --train "$DATA/corpus/train.jsonl" \
  --test "$DATA/corpus/test.jsonl" --out "$OUT"
