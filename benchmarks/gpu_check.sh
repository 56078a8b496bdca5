#!/bin/bash
# The GPU check in one run (a lent CUDA machine, from the repository root): the environment, the
# gpu-marked tests and the mlp benchmarks on CUDA, logs in $OUT (default: runs/gpu-check).
# Usage: OUT=runs/gpu-check bash benchmarks/gpu_check.sh
OUT=${OUT:-runs/gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=. XLA_PYTHON_CLIENT_PREALLOCATE=false TORCHINDUCTOR_CACHE_DIR=/tmp/ind
T_TESTS=${T_TESTS:-200}; T_BENCH=${T_BENCH:-75}
{ date -u; nvidia-smi -L; nproc; python3 -c "import sys,torch;print(sys.version);print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
  python3 -c "import hybrid_node as hn; print('hybrid_node ok')"
  python3 -m pip list 2>/dev/null | grep -iE "^(torch|triton|jax|jaxlib|diffrax|equinox|torchdiffeq|pytest-xdist|pytest-timeout|scipy|numpy) "; } 2>&1 | tee $OUT/env.log
timeout $T_TESTS python3 -m pytest -q -p no:cacheprovider -m gpu -n 8 --timeout 220 -rfE --durations=15 \
  tests/test_compiled_cuda.py tests/test_whole_solve.py tests/test_device_loop.py tests/test_sde_cuda.py \
  tests/test_per_sample.py 2>&1 | tee $OUT/tests.log
for w in mlp-fwd mlp-train-adjoint mlp-train-direct; do
  timeout ${T_BENCH} python3 -m benchmarks.run --device cuda --threads 1 --workloads $w \
    --frameworks hybrid_node hybrid_node+compile hybrid_node+device hybrid_node+device+compile torchdiffeq diffrax \
    --repeats 10 --no-grad-error --memory-steps none --out /tmp/bench-$w 2>&1 | tee $OUT/bench-$w.log
done
