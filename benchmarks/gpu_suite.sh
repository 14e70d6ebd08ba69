#!/usr/bin/env bash
# Everything the GPU issues ask for, in one call on a lent CUDA machine (whose Python has torch and triton but
# not pymatgen/ase/chgnet: those come as wheels in .whl/, see benchmarks/NOTES.md "GPU runs").
#
#   bash benchmarks/gpu_suite.sh [stage ...]     stages: info calibrate tests check profile potential relax is2re
#                                                is2re2 overhead (default: all but is2re2 and overhead)
#   is2re2: the IS2RE proxy again with two engine processes sharing the GPU (host work overlapping device work)
#   overhead: the engine's own host time per structure and per step with the batch on the GPU (a free potential)
#
# Logs go to $OUT (the device tool's output folder) or ./gpu_out.
set -u
OUTDIR=${OUT:-gpu_out}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:.whl:src
else
  export PYTHONPATH=src
fi
PY=${PYTHON:-python3}
stages=${*:-info calibrate tests check profile potential relax is2re}
for stage in $stages; do
  echo "=================== $stage ($(date +%T))"
  case $stage in
    info)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
      ;;
    calibrate)
      MATFUNNEL_CACHE=$OUTDIR $PY -m matfunnel.cli calibrate --device cuda --force 2>&1 | tee "$OUTDIR/calibrate.txt" ;;
    tests)
      MATFUNNEL_TEST_DEVICE=cuda $PY -m pytest -q -s -p no:cacheprovider tests/test_chgnet_triton.py \
        tests/test_matris_triton.py tests/test_chgnet_parity.py 2>&1 | tee "$OUTDIR/gpu_tests.txt" | grep -E "parity|passed|failed|Error|error" ;;
    check)
      $PY benchmarks/gpu_check.py 2>&1 | tee "$OUTDIR/gpu_check.txt" ;;
    profile)
      $PY benchmarks/gpu_check.py --profile --sizes 2048,6912 --largest "" > "$OUTDIR/gpu_profile.txt" 2>&1; tail -5 "$OUTDIR/gpu_profile.txt" ;;
    potential)
      $PY benchmarks/potential_throughput.py --device cuda --n 300 --supercells 1000,2000 --ref-batch-size 16 \
        --seed 7 --repeats 3 --scaling 8,64,512,2000,10000,30000 2>&1 | tee "$OUTDIR/potential_throughput_cuda.txt" ;;
    relax)
      $PY benchmarks/relax_throughput.py --device cuda --n 100 --ref-n ${REF_N:-20} 2>&1 \
        | tee "$OUTDIR/relax_throughput_cuda.txt" ;;
    is2re)
      $PY benchmarks/relax_throughput.py --device cuda --n ${IS2RE_N:-1000} --seed 1 --no-ase --no-chgnet 2>&1 \
        | tee "$OUTDIR/relax_throughput_cuda_n1000.txt" ;;
    is2re2)
      $PY benchmarks/relax_throughput.py --device cuda --n ${IS2RE_N:-1000} --seed 1 --no-ase --no-chgnet \
        --processes 2 2>&1 | tee "$OUTDIR/relax_throughput_cuda_n1000_2proc.txt" ;;
    overhead)
      $PY benchmarks/engine_overhead.py --device cuda --n 2000 --max-atoms 50000 2>&1 \
        | tee "$OUTDIR/engine_overhead_cuda.txt" ;;
    *) echo "unknown stage $stage" ;;
  esac
done
echo "=================== done ($(date +%T))"
