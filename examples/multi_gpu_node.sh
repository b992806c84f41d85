#!/bin/bash
# K data orders side by side on one multi-GPU node: the GPUs are split into K groups and
# each order trains on its own group (CUDA_VISIBLE_DEVICES), e.g. 8 GPUs, K = 4: orders
# 0-3 on GPUs {0,1}, {2,3}, {4,5}, {6,7}. Run from the repository root:
#
#   examples/multi_gpu_node.sh train/configs/paper_gsm8k.yaml 4 [GPUS] [ACCELERATE_CONFIG]
#
# Check first that one group holds an order: sftmerge plan CONFIG --gpus $((GPUS / K)) --gpu-memory 79.6
# K must match the config's `orders` (or pass --orders K through to every order, as here).
# A rerun skips finished orders and resumes interrupted ones.
set -euo pipefail
CONFIG=${1:?usage: examples/multi_gpu_node.sh CONFIG.yaml K [GPUS] [ACCELERATE_CONFIG]}
K=${2:?give K, the number of orders}
GPUS=${3:-$(nvidia-smi --list-gpus | wc -l)}
ACCELERATE_CONFIG=${4:-train/accelerate/fsdp.yaml}
PER=$((GPUS / K))
if [ "$PER" -lt 1 ]; then echo "error: $K orders need at least $K GPUs (have $GPUS)" >&2; exit 1; fi

mkdir -p logs
pids=()
for ((k = 0; k < K; k++)); do
    first=$((k * PER))
    devices=$(seq -s, "$first" $((first + PER - 1)))
    CUDA_VISIBLE_DEVICES=$devices accelerate launch --config_file "$ACCELERATE_CONFIG" \
        --num_processes "$PER" --main_process_port $((29500 + k)) \
        -m sftmerge.cli.main train sft "$CONFIG" --orders "$K" --order "$k" > "logs/order-$k.log" 2>&1 &
    pids+=($!)
    echo "order $k on GPUs $devices (log: logs/order-$k.log)"
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
