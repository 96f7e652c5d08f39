#!/usr/bin/env bash
# The GPU run of issue 8: Remoe's backbone on one NVIDIA GPU (H100/H200) for a DeepSeek-V2-Lite-shaped
# bf16 model, vs the whole model on the GPU (transformers) and vs MIX, experts in CPU expert processes.
# Under 8 minutes end to end, no network. Results: OUT/gpu.json. Without a GPU it says so, writes
# OUT/gpu.json with the reason, and exits 0.
#
# Usage: bench/gpu/run.sh OUT [bench.py options, e.g. --layers 27 --new-tokens 32]
#        PYTHON=/path/to/python bench/gpu/run.sh OUT   (default: .venv/bin/python if present, else python3)
set -euo pipefail
if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit $(( $# < 1 ))
fi
out=$1
shift
cd "$(dirname "$0")/../.."
py=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
mkdir -p "$out"
if ! reason=$("$py" -c '
import torch
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch " + torch.__version__)
print(torch.cuda.get_device_name())' 2>&1); then
    echo "bench/gpu/run.sh: skipped: ${reason##*$'\n'}"
    printf '{"skipped": "%s", "date": "%s"}\n' "${reason##*$'\n'}" "$(date -u '+%Y-%m-%d %H:%M UTC')" > "$out/gpu.json"
    exit 0
fi
echo "bench/gpu/run.sh: running on $reason"
PYTHONUNBUFFERED=1 exec "$py" bench/gpu/bench.py --out "$out" "$@"
