#!/usr/bin/env bash
# The checks that need a GPU, in one go: the whole test suite (tests/test_devices.py then runs
# every device test on CUDA as well), a training run from the CLI on CUDA, and the benchmarks
# whose CUDA paths differ from the CPU ones. Logs go to DIR (default gpu-check/).
#
#     bash benchmarks/gpu.sh [DIR]        # run from the repository root, trainlab importable
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
python3 - <<'PY' 2>&1 | tee "$out/env.txt"
import torch
print("torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0))
PY
status=0
python3 -m pytest -q tests 2>&1 | tee "$out/pytest.log" || status=1
python3 -m trainlab train --config configs/digits.toml --set train.device=\"cuda\" --out "$(mktemp -d)/run" --no-progress \
    2>&1 | tee "$out/train.log" || status=1
python3 benchmarks/batchnorm.py --device cuda --calls 300 2>&1 | tee "$out/batchnorm.md" || status=1
python3 benchmarks/optim_step.py --device cuda --rounds 7 2>&1 | tee "$out/optim_step.md" || status=1
python3 benchmarks/hvp_batching.py --device cuda 2>&1 | tee "$out/hvp_batching.md" || status=1
exit $status
