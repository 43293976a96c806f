#!/usr/bin/env bash
# One rented-GPU session: train the chat model and the ranker side by side, return fp16 shards.
# Needs, beside the repository: .devcarry/minilm (MiniLM with fp16 weights, see training/shards.py)
# and .devcarry/data (output of `rapport-train prepare`, splits.json xz-compressed).
# Writes to $OUT: chat-*.safetensors, ranker-*.safetensors, train.log, ranker.log (8 files at most).
#   usage: OUT=/some/folder bash training/gpu_run.sh CHAT_MINUTES RANKER_MINUTES
set -u
CHAT_MINUTES=${1:-7.5}
RANKER_MINUTES=${2:-5}
export PYTHONUNBUFFERED=1 RAPPORT_MINILM_DIR=$PWD/.devcarry/minilm
PY=${PYTHON:-python3}
DATA=/tmp/rapport-data
mkdir -p $DATA /tmp/runs
xz -dc .devcarry/data/splits.json.xz > $DATA/splits.json && cp .devcarry/data/facts.json .devcarry/data/sizes.json $DATA/ || exit 1
nvidia-smi -L; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
$PY -m training.cli train-ranker --run /tmp/runs/ranker --data $DATA --device cuda --bf16 --batch-size 256 \
    --lr 1e-4 --epochs 8 --max-minutes "$RANKER_MINUTES" --train-layers 3 --threads 4 > $OUT/ranker.log 2>&1 &
RANKER=$!
$PY -m training.cli train --run /tmp/runs/chat --data $DATA --device cuda --bf16 --freeze-embeddings \
    --batch-size 128 --lr 2e-4 --max-minutes "$CHAT_MINUTES" --time-schedule --max-examples 100000000 \
    --eval-every 50000 --checkpoint-minutes 3 --threads 4 > $OUT/train.log 2>&1
echo "chat training exit $?"
wait $RANKER; echo "ranker training exit $?"
cat /tmp/runs/chat/log.jsonl >> $OUT/train.log; cat /tmp/runs/ranker/log.jsonl >> $OUT/ranker.log
[ -f /tmp/runs/chat/best.pt ] && $PY -m training.cli shards pack-chat --checkpoint /tmp/runs/chat/best.pt --out $OUT
[ -d /tmp/runs/ranker/best ] && $PY -m training.cli shards pack-ranker --model /tmp/runs/ranker/best --out $OUT
ls -la $OUT
