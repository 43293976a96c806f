#!/usr/bin/env bash
# Continue training a chat checkpoint on a rented GPU. A device call carries at most 64 MiB, and the
# checkpoint's weights alone are 97 MB as fp16, so they travel in two calls:
#   here:            bash training/gpu_continue.sh pack ~/.cache/rapport/runs/persona2/best.pt
#                    (fills .devcarry/part1 and .devcarry/part2, each under 60 MB, from `rapport-train
#                    prepare`'s data in ~/.cache/rapport/data and ../shared/data/synthetic-persona-chat)
#   device call 1:   bash training/gpu_continue.sh stage .devcarry/part1
#   device call 2:   OUT=... bash training/gpu_continue.sh train .devcarry/part2 MINUTES [more train args]
#   here:            rapport-train shards unpack-chat --shards <call 2's files> --base <the same best.pt> --out X.pt
# The token embeddings and the output layer stay frozen, so only the other weights (50 MB) come back,
# as fp16 shards of at most 15 MiB. STAGE (default /tmp/rapport-stage) is where call 1 leaves its files.
set -u
STAGE=${STAGE:-/tmp/rapport-stage}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

case "${1:-}" in
pack)
    CKPT=$2
    rm -rf .devcarry/part1 .devcarry/part2 /tmp/rapport-init-shards
    mkdir -p .devcarry/part1/persona .devcarry/part2/data .devcarry/part2/minilm
    $PY -m training.shards pack-init --checkpoint "$CKPT" --out /tmp/rapport-init-shards > /dev/null || exit 1
    cp ../shared/data/synthetic-persona-chat/* .devcarry/part1/persona/
    xz -T2 -c ~/.cache/rapport/data/splits.json > .devcarry/part2/data/splits.json.xz
    cp ~/.cache/rapport/data/facts.json ~/.cache/rapport/data/sizes.json .devcarry/part2/data/
    cp "$($PY -c 'from training.modeling import minilm_dir; print(minilm_dir())')/tokenizer.json" .devcarry/part2/minilm/
    for shard in $(ls -S /tmp/rapport-init-shards/*.safetensors); do  # largest first, each to the lighter part
        one=$(du -sb .devcarry/part1 | cut -f1); two=$(du -sb .devcarry/part2 | cut -f1)
        if [ "$one" -le "$two" ]; then cp "$shard" .devcarry/part1/; else cp "$shard" .devcarry/part2/; fi
    done
    du -sh .devcarry/part1 .devcarry/part2
    ;;
stage)
    mkdir -p "$STAGE" && cp -r "$2"/. "$STAGE"/ || exit 1
    nvidia-smi -L; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
    du -sh "$STAGE"
    ;;
train)
    PART=$2; MINUTES=$3; shift 3
    cp -r "$PART"/. "$STAGE"/ || exit 1
    xz -dc "$STAGE/data/splits.json.xz" > "$STAGE/data/splits.json" || exit 1
    export RAPPORT_MINILM_DIR=$STAGE/minilm
    $PY -m training.shards unpack-init --shards "$STAGE" --out "$STAGE/init" || exit 1
    DEVICE=cuda; $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || DEVICE=cpu
    $PY -m training.cli train --run "$STAGE/run" --data "$STAGE/data" --init-from "$STAGE/init" \
        --persona-data "$STAGE/persona" --device $DEVICE --bf16 --freeze-embeddings --max-minutes "$MINUTES" \
        --time-schedule --max-examples 100000000 --checkpoint-minutes 3 --threads 4 "$@" > "$OUT/train.log" 2>&1
    echo "train exit $?" >> "$OUT/train.log"
    cp "$STAGE/run/log.jsonl" "$OUT/log.jsonl"
    $PY -m training.shards pack-chat --checkpoint "$STAGE/run/best.pt" --out "$OUT"
    ls -la "$OUT"
    ;;
*)
    echo "usage: $0 pack CHECKPOINT | stage PART | train PART MINUTES [train args]" >&2; exit 2
    ;;
esac
