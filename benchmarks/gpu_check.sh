#!/usr/bin/env bash
# The GPU checks of issues 4 and 7 in one run, for a machine with one CUDA GPU (a few minutes on an H200):
#   1. bench.py on the GPU in float32 and with --amp: ms per step and per prediction, peak GPU memory
#      (60000 x the omniglot-train-default step is the full Omniglot run);
#   2. --amp against float32 on the real Omniglot sample: same seed, the reduced configuration, STEPS steps,
#      1000 test episodes per shot, so the two accuracies compare within their 95% CIs;
#   3. torchrun with one process on the GPU: the NCCL, SyncBatchNorm and DDP path.
# Usage: OMNIGLOT_ZIPS=DIR bash benchmarks/gpu_check.sh [OUT_DIR], DIR holding the official
# images_background_small1.zip and small2.zip. DEVICE=cpu STEPS=3 smoke-tests the script without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-check}
zips=${OMNIGLOT_ZIPS:?set OMNIGLOT_ZIPS to the folder holding images_background_small1.zip and small2.zip}
device=${DEVICE:-cuda}
steps=${STEPS:-2500}
configs=(omniglot-train-default omniglot-train-reduced omniglot-predict mimgnet-train-default mimgnet-predict
         simclr-train-512)
[ "$device" = cuda ] && python3 benchmarks/bench.py --device cuda --only "${configs[@]}"
[ "$device" = cuda ] && python3 benchmarks/bench.py --device cuda --amp --only "${configs[@]}"
python3 data/prepare_omniglot.py --source "$zips"/images_background_small*.zip --out "$out/data"
flags=(--data-dir "$out/data" --way 5 --sample-size 100 --batch-size 1 --train-mc-sample-size 8
       --test-mc-sample-size 32 --train-iters "$steps" --eval-episodes 1000 --select-by last --device "$device"
       --overwrite)
python3 omniglot/main.py "${flags[@]}" --save-dir "$out/fp32"
python3 omniglot/main.py "${flags[@]}" --save-dir "$out/amp" --amp
python3 -m torch.distributed.run --nproc_per_node 1 omniglot/main.py --data-dir "$out/data" --debug --way 5 \
    --sample-size 100 --batch-size 2 --device "$device" --save-dir "$out/torchrun" --overwrite
