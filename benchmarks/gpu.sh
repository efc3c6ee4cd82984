#!/usr/bin/env bash
# What a lent GPU machine runs: the GPU tests, then every GPU benchmark (JSON results in
# benchmarks/results/, copied to $OUT when it is set so that they come back). Run from the
# repository root:  bash benchmarks/gpu.sh [tests] [dense] [topk] [peers]   (no argument: all four)
# A device call lasts at most 10 minutes: if all three do not fit, run them in separate calls.
# The project is installed without dependencies: the machine's image holds torch, numpy, scipy,
# h5py, click, matplotlib, tqdm and pytest, and nothing can be fetched there.
set -uo pipefail
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
if [ $# -eq 0 ]; then set -- tests dense topk peers; fi
status=0
run() { echo "+ $*"; "$@" || status=1; }
for part in "$@"; do
  case "$part" in
    tests)
      run python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_batching.py ;;
    dense)
      run python3 benchmarks/jvp_overhead.py --device cuda
      run python3 benchmarks/dense_jvp.py --device cuda --dtype float32 --batch-size 768 --compile
      run python3 benchmarks/dense_jvp.py --device cuda --dtype float64 --batch-size 768
      run python3 benchmarks/dense_jvp.py --device cuda --dtype float32 --size 32 --batch-size 3072 --fd-repeats 3 --compile ;;
    topk)
      run python3 benchmarks/topk.py --device cuda --size 32 --batch-size 512 --baselines
      run python3 benchmarks/topk.py --device cuda --size 64 --batch-size 512 ;;
    peers)
      run python3 benchmarks/peers.py dense --device cuda --sizes 16 32 --skip fd_central_loop stacked_scores
      run python3 benchmarks/peers.py topk --device cuda --sizes 32 64 --k 16 32 ;;
    *) echo "unknown part $part (tests, dense, topk, peers)"; exit 2 ;;
  esac
done
if [ -n "${OUT:-}" ]; then cp benchmarks/results/*cuda*.json "$OUT"/ 2>/dev/null; fi
exit $status
