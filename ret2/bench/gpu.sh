#!/usr/bin/env bash
# The GPU benchmark in one command, from a checkout whose package is not installed (torch, transformers and peft are;
# faiss need not be):
#
#   bash ret2/bench/gpu.sh
#
# Measures, in this order (a time guard drops what is left at the end, never the first two):
#   1. ViT-L/14 at 336 px, bf16, SDPA, image+text documents, batch 256: ReT-2 docs/s against the backbone floor;
#   2. ViT-B/32 training steps, bf16 autocast, batch 128 pairs: frozen towers vs full fine-tuning;
#   then ReT-1 mode vs the reference code at ViT-L/14@336, ViT-B/32 encode and tower skipping, LoRA and
#   checkpointed training, and a 100k-document exact search on the GPU.
# Writes $OUT/bench-gpu.json (./bench-gpu.json without $OUT) after every phase, and prints markdown tables.
# Expected: about 2 minutes of command time on one H100/H200, 4 at most: BENCH_BUDGET (150 s) stops starting new
# cases, BENCH_TIMEOUT (240 s) kills the run; the JSON written so far stays.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
out_dir="${OUT:-.}"
mkdir -p "$out_dir"
python="${PYTHON:-python3}"  # on the lent GPU machines, python3 is the interpreter that holds PyTorch

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"

# ReT-2's config needs transformers >= 5.24 (SubConfigSpec); the lent GPU image had 5.17. Wheels of transformers 5.24
# and of the regex it requires wait in .whl/bench (git-ignored; name ".whl/bench" in the device tool's carry): they
# are installed into a private folder for this run only, in front of the machine's own packages.
if ! "$python" -c "from transformers.configuration_utils import SubConfigSpec" 2>/dev/null; then
    if ls .whl/bench/*.whl >/dev/null 2>&1; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/bench-site \
            .whl/bench/*.whl || exit 1
        export PYTHONPATH="/tmp/bench-site:$PYTHONPATH"
        "$python" -c "import transformers; print('using transformers', transformers.__version__, 'from .whl/bench')"
    else
        echo "this transformers is too old for ReT-2 (needs >= 5.24) and .whl/bench has no wheels:" \
            "see docs/benchmarks.md, 'GPU run'" >&2
        exit 1
    fi
fi

timeout -k 10 "${BENCH_TIMEOUT:-240}" "$python" -m ret2.bench --suite gpu --device cuda \
    --time-budget "${BENCH_BUDGET:-150}" --json "$out_dir/bench-gpu.json"
status=$?
[ -f "$out_dir/bench-gpu.json" ] && echo "report: $out_dir/bench-gpu.json"
exit $status
