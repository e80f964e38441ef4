#!/usr/bin/env bash
# `make bench-gpu`: on a machine with one CUDA GPU whose python3 holds torch and nothing else of kiln's, and
# no network: install kiln from the wheels carried in .whl/ (made beforehand, with network, by
# `make gpu-wheels`), unpack the data carried in .gpu-data/, then run
#   1. the GPU speedrun: configs/cifar10_speedrun.yaml against airbench94 (benchmarks/gpu_speedrun.py),
#   2. the photo recipes on the GPU (presized photos resident there, augmented there) against the tutorial,
#   3. the CUDA-path tests (bf16 autocast, channels_last, torch.compile, GPU-resident data),
# each bounded in time (under 9 minutes in all), every figure appended to one file: $OUT/bench-gpu.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
mkdir -p "$OUT"
LOG="$OUT/bench-gpu.txt"
PY=${PY:-python3}
say() { echo "== $*" | tee -a "$LOG"; }
: > "$LOG"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
    2>&1 | tee -a "$LOG" || exit 1
t0=$(date +%s)
say "setup"
$PY -m venv --system-site-packages .venv-gpu
.venv-gpu/bin/python -m pip install -q --no-index --find-links .whl --no-deps -e . 2>&1 | tail -2 | tee -a "$LOG"
for pkg in pydantic pydantic_core annotated_types typing_inspection airbench; do  # what the GPU image lacks
  .venv-gpu/bin/python -c "import $pkg" 2>/dev/null || \
    .venv-gpu/bin/python -m pip install -q --no-index --find-links .whl --no-deps "${pkg//_/-}" 2>&1 | tail -1 | tee -a "$LOG"
done
mkdir -p data
for a in .gpu-data/*.tar.gz; do [ -e "$a" ] && tar -xzf "$a" -C data/; done
export KILN_WEIGHTS="$PWD/.gpu-data/tf_efficientnet_lite0_imagenet.safetensors"
PYB=.venv-gpu/bin/python
say "setup took $(( $(date +%s) - t0 )) s"
if [ -d data/cifar10 ]; then
  say "1. GPU speedrun: kiln cifar10_speedrun vs airbench94"
  timeout 240 $PYB -m benchmarks.gpu_speedrun --runs 3 2>&1 | grep -v Warning | tee -a "$LOG"
else
  say "1. skipped: carry .gpu-data/cifar10-jpeg.tar.gz"
fi
if [ -d data/hymenoptera_data ] && [ -f "$KILN_WEIGHTS" ]; then
  say "2. photo recipes on the GPU vs the tutorial"
  timeout 180 $PYB -m benchmarks.transfer_photos --seeds 2 --tutorial-epochs 25 --out "$OUT/bench_transfer_photos_gpu.json" \
    2>&1 | tee -a "$LOG"
else
  say "2. skipped: carry .gpu-data/hymenoptera-jpeg.tar.gz and the weights"
fi
say "3. CUDA-path tests"
timeout 120 $PYB -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tail -5 | tee -a "$LOG"
say "all done in $(( $(date +%s) - t0 )) s; figures in $LOG"
