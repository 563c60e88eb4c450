#!/usr/bin/env bash
# One prepared GPU session: the particle-layer benchmark's three sections and the `-m gpu`
# tests, in sequence (timings are never taken while another job uses the GPU), each under its
# own time limit so one slow part cannot take the others' time.
#
#   bash benchmarks/gpu_session.sh OUTDIR        # on a CUDA machine, from the checkout's root
#
# Wheels in .whl/ (the package itself and any dependency the machine lacks) are installed
# into a private folder first, so the machine's own torch and Triton are what is measured.
# Writes OUTDIR/session.log (everything printed) and layer.json, epoch.json, cutoff.json.
# Limits (seconds) may be changed through LAYER_S, EPOCH_S, CUTOFF_S, TESTS_S; SECTIONS
# chooses and orders the parts (default "layer epoch cutoff tests").
set -u
out=${1:?usage: gpu_session.sh OUTDIR}
mkdir -p "$out"
log="$out/session.log"
export PYTHONUNBUFFERED=1
py=$(command -v python3 || command -v python)

if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/particlesim-site .whl/*.whl >>"$log" 2>&1 || echo "wheel install failed" >>"$log"
fi
# the checkout first (its code is what is measured), then the installed entry points and deps
export PYTHONPATH="$PWD:$PWD/plugins:/tmp/particlesim-site${PYTHONPATH:+:$PYTHONPATH}"

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
    "$py" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| triton', triton.__version__, '|', torch.cuda.get_device_name())"
    "$py" -c "import particlesim_lange, particlesim.kernels.fused as f; print('particlesim importable; fused available:', f.fused_available())"
} 2>&1 | tee -a "$log"

part() {  # part NAME LIMIT COMMAND...: run one part under its limit, log it, say how it ended
    local name=$1 limit=$2
    shift 2
    local begin=$SECONDS
    echo "=== $name (limit ${limit}s) ===" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - begin))s ===" | tee -a "$log"
}

bench=benchmarks/particle_layer.py
for section in ${SECTIONS:-layer epoch cutoff tests}; do
    case $section in
        layer) part layer "${LAYER_S:-200}" "$py" $bench ${BENCH_ARGS:-} --sections layer --profile --out "$out/layer.json" ;;
        epoch) part epoch "${EPOCH_S:-90}" "$py" $bench ${BENCH_ARGS:-} --sections epoch --out "$out/epoch.json" ;;
        cutoff) part cutoff "${CUTOFF_S:-120}" "$py" $bench ${BENCH_ARGS:-} --sections cutoff --out "$out/cutoff.json" ;;
        tests) part tests "${TESTS_S:-120}" "$py" -m pytest -q -m gpu -p no:cacheprovider \
            -n "${TEST_WORKERS:-8}" -o addopts="" tests/test_fused.py tests/test_kernels.py ;;
        *) echo "unknown section $section" | tee -a "$log" ;;
    esac
done
nvidia-smi --query-gpu=clocks.sm,temperature.gpu,memory.used --format=csv 2>&1 | tee -a "$log"
