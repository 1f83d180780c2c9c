#!/usr/bin/env bash
# shmserve's GPU checks on an NVIDIA host, in one go: the gpu-marked tests, then perf/gpu_bench.py.
#
#   perf/gpu_check.sh [WHEEL_DIR]          (run from the repository root)
#
# WHEEL_DIR (optional): wheels (or sdists) of dependencies the host's python3 lacks; they are
# installed with no index into /tmp/site, which goes first on PYTHONPATH.
# Everything printed goes to $OUT/check.log (OUT defaults to perf/results/gpu_check); the bench
# writes $OUT/gpu_bench.json after every section. Each stage has its own time limit (seconds,
# overridable: LIMIT_BUILD, LIMIT_TESTS, LIMIT_BENCH, LIMIT_CPU_TESTS), so one hang cannot eat the
# session; BENCH_ARGS passes options to gpu_bench.py (e.g. --quick). Exit status: 0 when every
# stage passed, else the number of failed stages.
set -o pipefail
OUT=${OUT:-perf/results/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/check.log
: >"$LOG"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
FAILED=0

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# stage NAME LIMIT CMD...: run CMD under `timeout`, output into the log; count a failure.
stage() {
    local name=$1 limit=$2 rc
    shift 2
    log "stage $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=$?
    log "stage $name rc=$rc in $((SECONDS - t0))s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
    return "$rc"
}

log "host: $(uname -srm); python: $($PY -V 2>&1) at $(command -v "$PY")"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1
    echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}; /proc/driver/nvidia/gpus: $(ls /proc/driver/nvidia/gpus 2>&1 | tr '\n' ' ')"
    command -v nvcc >/dev/null && nvcc --version | tail -2
    command -v gcc >/dev/null && gcc --version | head -1
} 2>&1 | tee -a "$LOG"

if [ -n "${1:-}" ]; then
    mkdir -p /tmp/site
    wheels=("$1"/*.whl)
    sdists=("$1"/*.tar.gz)
    [ -e "${wheels[0]}" ] && stage wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    # An sdist (posix_ipc has been one) is built here, against the host's python and compiler.
    [ -e "${sdists[0]}" ] && stage sdists 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
        --no-cache-dir --target /tmp/site "${sdists[@]}"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

stage versions 120 "$PY" -c '
import numpy
print("numpy", numpy.__version__)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "| available", torch.cuda.is_available(),
          "| devices", torch.cuda.device_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("gpu:", p.name, f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, cc {p.major}.{p.minor}")
except Exception as exc:
    print("torch unavailable:", exc)
try:
    import cupy
    print("cupy", cupy.__version__, "| runtime", cupy.cuda.runtime.runtimeGetVersion(), "| driver", cupy.cuda.runtime.driverGetVersion())
except Exception as exc:
    print("cupy unavailable:", exc)
import shmserve, shmserve.gpu as gpu
print("shmserve", shmserve.__file__, "| gpu.available()", gpu.available())
'

# One export before anything else: our CUDA IPC needs plain cudaMalloc blocks, which torch's
# expandable segments are not; if the host's torch defaults to them, say so and turn them off.
smoke='import torch, shmserve.gpu as g; d = g.export_handle(torch.zeros(4, device="cuda")); print("export ok, offset", d["offset"], "alloc", d["alloc_size"]); g.release(d["token"])'
if ! stage smoke 120 "$PY" -c "$smoke"; then
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False
    stage smoke-no-expandable 120 "$PY" -c "$smoke" && FAILED=$((FAILED - 1)) &&
        log "torch's expandable segments were on: running with PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF"
fi

if stage build "${LIMIT_BUILD:-120}" "$PY" setup.py -q build_ext --inplace; then
    built=$(ls shmserve/_native/_*"$($PY -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" 2>/dev/null | wc -l)
    sources=$(ls shmserve/_native/*.c | wc -l)
    log "C accelerators built: $built of $sources (a missing one runs its pure-Python twin)"
else
    log "C accelerators did NOT build: running on the pure-Python twins (SHMSERVE_PURE_PYTHON=1)"
    export SHMSERVE_PURE_PYTHON=1
fi

stage gpu-tests "${LIMIT_TESTS:-180}" "$PY" -m pytest -p no:cacheprovider -m gpu -rs -q --timeout 90 tests/unit/test_gpu_*.py
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
stage bench "${LIMIT_BENCH:-300}" "$PY" perf/gpu_bench.py --json "$OUT/gpu_bench.json" ${BENCH_ARGS:-}
# The CPU-side GPU tests too: on a GPU host nvcc compiles the kernels, and nothing may assume its absence.
stage cpu-gpu-tests "${LIMIT_CPU_TESTS:-90}" "$PY" -m pytest -p no:cacheprovider -m "not gpu" -q --timeout 60 tests/unit/test_gpu_*.py

log "done: $FAILED failed stage(s)"
exit "$FAILED"
