#!/usr/bin/env bash
# The GPU benchmarks of benchmarks/README.md in one go, on a machine with torch, triton and pytest:
# the gpu tests, the benchmark subject, the training step (with its stage split, and without the split's
# synchronization) and the rendered frame, with the Triton kernels and with the plain PyTorch reference,
# with the networks' CUDA graphs and op by op. Wheels the machine lacks (OpenEXR for synth) may be put in
# $CARRY (default .carry), and packages to put on the path as they are in $CARRY/site (for example
# stlpips_pytorch/__init__.py with its weights/vST0.0/vgg_shift_tolerant.pth for the patch phase).
#   bash benchmarks/gpu_benchmarks.sh OUT_DIR [STEPS_PER_EPOCH]
set -euo pipefail
out=${1:?output folder}
per_epoch=${2:-3}
carry=${CARRY:-.carry}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls "$carry"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$carry"/*.whl
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [ -d "$carry/site" ]; then export PYTHONPATH=$PYTHONPATH:$PWD/$carry/site; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
if [ "${TESTS:-1}" = 1 ]; then
    python3 -m pytest -q -m gpu -p no:cacheprovider -n 4 tests 2>&1 | tee "$out/pytest_gpu.txt" | tail -15 || true
fi
subject=/tmp/bench_subject
[ -d "$subject/gendir" ] || {
    python3 benchmarks/bench_subject.py "$subject" --cameras 12
    python3 -m npva preprocess "$subject" --workers 16
}
common=(--preset full --set "train.steps_per_epoch=$per_epoch")
python3 benchmarks/bench_train.py "$subject" "${common[@]}" --steps $((35 * per_epoch)) --kernels auto \
    --out /tmp/bench_run --json "$out/train_fast.json" 2>&1 | tee "$out/train_fast.txt"
# the step time of a user's run: no stage synchronization, the next step prepared during this one;
# the networks op by op, then from their CUDA graphs
python3 benchmarks/bench_train.py "$subject" "${common[@]}" --steps $((35 * per_epoch)) --kernels auto \
    --graphs off on --no-stages 2>&1 | tee "$out/train_fast_no_stages.txt"
python3 benchmarks/bench_train.py "$subject" "${common[@]}" --steps $((35 * per_epoch)) --kernels torch \
    --json "$out/train_torch.json" 2>&1 | tee "$out/train_torch.txt"
if [ -n "${PROFILE:-}" ]; then
    python3 benchmarks/bench_train.py "$subject" "${common[@]}" --steps 12 --kernels auto --profile \
        > "$out/profile.txt" 2>&1 || true
fi
python3 benchmarks/bench_render.py /tmp/bench_run --frames 12 --kernels auto torch --precision bf16 fp32 2>&1 |
    tee "$out/render.txt"
python3 benchmarks/bench_render.py /tmp/bench_run --frames 12 --kernels auto --precision bf16 --graphs off on \
    2>&1 | tee "$out/render_graphs.txt"
if [ -n "${PROFILE:-}" ]; then
    python3 benchmarks/bench_render.py /tmp/bench_run --frames 4 --kernels auto --profile > "$out/render_profile.txt" 2>&1 || true
fi
