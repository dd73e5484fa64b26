#!/usr/bin/env bash
# Training-step speed and peak memory on this machine's CPU: Loft vs PyTorch + PEFT, one after the other,
# same model (SmolLM2-135M-Instruct, f32), batch 4 × 256 tokens, LoRA r=16 on all linear layers.
# Prints figures; asserts nothing. Needs a Python with torch + transformers + peft (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-5}
cargo test --quiet --test smollm2 hf_folder_matches_transformers >/dev/null  # fetches the model, builds the HF folder
cargo build --quiet --release
LOFT=${CARGO_TARGET_DIR:-target}/release/loft
MODEL=target/test-models/smollm2-hf  # the same safetensors folder on both sides
echo "CPU: $(nproc) cores; SmolLM2-135M f32, batch 4 x 256, r=16 all linear, AdamW; mean of steps 2..$STEPS"
"$LOFT" bench-train --model "$MODEL" --batch 4 --seq 256 --rank 16 --steps "$STEPS"
"$LOFT" bench-train --model "$MODEL" --batch 4 --seq 256 --rank 16 --steps "$STEPS" --gradient-checkpointing
"$PYTHON" scripts/bench_train_reference.py "$MODEL" --batch 4 --seq 256 --rank 16 --steps "$STEPS" 2>/dev/null
