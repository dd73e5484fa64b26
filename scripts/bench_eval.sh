#!/usr/bin/env bash
# Evaluation speed on this machine's CPU: tokens/s of Loft's batched generation (`loft eval`, base model)
# against transformers' batched `generate` (left padding), same model (SmolLM2-135M-Instruct, f32), same
# prompts (the first ROWS of the sample chat dataset), greedy, same token budget and batch size.
# Prints figures; asserts nothing. Needs a Python with torch + transformers (PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROWS=${ROWS:-32}
TOKENS=${TOKENS:-64}
BATCH=${BATCH:-16}
cargo test --quiet --test smollm2 hf_folder_matches_transformers >/dev/null  # builds the HF folder
cargo build --quiet --release
LOFT=${CARGO_TARGET_DIR:-target}/release/loft
HF=target/test-models/smollm2-hf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n "$ROWS" assets/samples/support-chat.jsonl > "$work/rows.jsonl"
echo "CPU: $(nproc) cores; $ROWS prompts, batch $BATCH, up to $TOKENS new tokens, greedy"
for i in 1 2; do
  # A fresh cache each time, so the base answers are generated, not read back.
  XDG_CACHE_HOME="$work/cache-$i" "$LOFT" eval --model "$HF" --data "$work/rows.jsonl" \
    --max-new-tokens "$TOKENS" --batch "$BATCH" --out "$work/report-$i" --json 2>/dev/null |
    "$PYTHON" -c '
import json, sys
latency = json.load(sys.stdin)["models"]["base"]["latency"]
rows = int(sys.argv[1])
print(f"loft          {latency['"'"'tokens_out'"'"'] * rows:.0f} new tokens at {latency['"'"'tokens_per_second'"'"']:.1f} tokens/s")
' "$ROWS"
  "$PYTHON" scripts/bench_eval_reference.py "$HF" "$work/rows.jsonl" "$TOKENS" "$BATCH" 2>/dev/null
done
