#!/usr/bin/env bash
# One prepared GPU run (device tool): engine vs naive reference, GPT-2-small size, ~20-token targets,
# saliency and integrated_gradients (50 steps), fp32 and bf16; occlusion and value zeroing (fp32). Tried on CPU first
# with SMOKE=1.
# On the device machine torch + transformers are installed; captum travels as a wheel in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl captum==0.9.0
#   (and run with carry [".whl"], prefixing: pip install -q --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
n=${SMOKE:+4}; n=${n:-512}
model=${MODEL:-gpt2-small}   # SMOKE=1 MODEL=tiny-gpt2 benchmarks/gpu_check.sh tries the script on a CPU
run() { PYTHONUNBUFFERED=1 python3 benchmarks/engine_bench.py "$@" 2>&1 | grep -v Warning | tee -a "$OUT/gpu_bench.txt"; }
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu_bench.txt" || true
for dtype in fp32 bf16; do
  run --model $model --method saliency --batch-size 64 --sentences "$n" --naive-sentences "${NAIVE:-8}" --dtype $dtype
  run --model $model --method saliency --batch-size 64 --sentences "$n" --naive-sentences 0 --dtype $dtype --vjp batched
  run --model $model --method integrated_gradients --ig-steps 50 --internal-batch-size 1600 --batch-size 32 \
      --sentences "$(( n / 4 > 0 ? n / 4 : 1 ))" --naive-sentences 2 --dtype $dtype
done
# perturbation methods (fp32): occlusion vs the per-step reference; value zeroing with 16 tokens stacked per forward
# vs one token per forward (Inseq's schedule), where stacking should pay on a GPU (it does not on a 2-core CPU)
q=$(( n / 4 > 0 ? n / 4 : 1 ))
run --model $model --method occlusion --batch-size 32 --sentences "$q" --naive-sentences 2
run --model $model --method value_zeroing --batch-size 32 --sentences "$q" --naive-sentences 0
run --model $model --method value_zeroing --batch-size 32 --sentences "$q" --naive-sentences 0 --patterns-per-forward 1
# a model spread over every GPU (one GPU: half of it offloaded to CPU memory) equals the model on one device
PYTHONUNBUFFERED=1 python3 benchmarks/placement_check.py --model $model --sentences "${SMOKE:+4}${SMOKE:-16}" 2>&1 \
  | grep -v Warning | tee -a "$OUT/gpu_bench.txt"
# half precision next to fp32 (top-1 agreement, Spearman), and the plain float16 backward the engine's scaling avoids
PYTHONUNBUFFERED=1 python3 benchmarks/precision_bench.py --model $model --sentences "${SMOKE:+2}${SMOKE:-16}" 2>&1 \
  | grep -v Warning | tee -a "$OUT/gpu_bench.txt"
