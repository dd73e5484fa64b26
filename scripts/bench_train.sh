#!/usr/bin/env bash
# Training-step speed and peak memory on this machine's CPU: Loft's trainer step vs PyTorch + PEFT, one after
# the other, same model (SmolLM2-135M-Instruct, f32) and the same settings — Loft's training defaults:
# micro-batches of 4 x 256 tokens, 4 of them per optimizer step, LoRA r=16 (alpha 32) on all linear layers,
# dropout 0.05, gradients clipped to norm 1.0, AdamW. Prints figures; asserts nothing.
# Then the same for QLoRA: NF4 with double quantization, f32 compute, against PEFT + bitsandbytes.
# Needs a Python with torch + transformers + peft (+ bitsandbytes for QLoRA) (PYTHON=...); without one, only
# Loft's side runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-3}
cargo test --quiet --test smollm2 hf_folder_matches_transformers >/dev/null  # fetches the model, builds the HF folder
cargo build --quiet --release
LOFT=${CARGO_TARGET_DIR:-target}/release/loft
MODEL=target/test-models/smollm2-hf  # the same safetensors folder on both sides
SETTINGS=(--batch 4 --seq 256 --grad-accum 4 --rank 16 --dropout 0.05 --max-grad-norm 1.0 --steps "$STEPS")
echo "CPU: $(nproc) cores; SmolLM2-135M f32, ${SETTINGS[*]}; mean of steps 2..$STEPS"
for method in lora qlora; do
    "$LOFT" bench-train --model "$MODEL" "${SETTINGS[@]}" --method "$method"
    "$LOFT" bench-train --model "$MODEL" "${SETTINGS[@]}" --method "$method" --gradient-checkpointing
done
if "$PYTHON" -c "import torch, transformers, peft" 2>/dev/null; then
    "$PYTHON" scripts/bench_train_reference.py "$MODEL" "${SETTINGS[@]}" 2>/dev/null
    if "$PYTHON" -c "import bitsandbytes" 2>/dev/null; then
        "$PYTHON" scripts/bench_train_reference.py "$MODEL" "${SETTINGS[@]}" --qlora 2>/dev/null
        "$PYTHON" scripts/bench_train_reference.py "$MODEL" "${SETTINGS[@]}" --qlora --gradient-checkpointing 2>/dev/null
    else
        echo "pytorch+peft+bnb  skipped: $PYTHON has no bitsandbytes"
    fi
else
    echo "pytorch+peft  skipped: $PYTHON has no torch, transformers and peft"
fi
