#!/usr/bin/env bash
# UI responsiveness while training: opens the real window (release build), opens a model and the sample
# dataset, trains STEPS steps from the window, and prints time to first frame and the UI thread's frame
# times (p50/p99, over all frames and over the frames during training) as JSON, plus a screenshot.
#
# Usage: scripts/bench_ui.sh MODEL [STEPS] [SCREENSHOT.png]
#   MODEL: a model folder, .gguf or repo id (e.g. target/test-models/smollm2-hf after `cargo test`)
# Needs a display; without $DISPLAY it starts Xvfb on :77.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:?usage: scripts/bench_ui.sh MODEL [STEPS] [SCREENSHOT.png]}"
steps="${2:-20}"
shot="${3:-target/bench-ui.png}"
cargo build --release --quiet
if [ -z "${DISPLAY:-}" ]; then
    Xvfb :77 -screen 0 1920x1200x24 -nolisten tcp >/dev/null 2>&1 &
    xvfb=$!
    trap 'kill $xvfb' EXIT
    export DISPLAY=:77
    sleep 1
fi
runs="$(mktemp -d)"
target/release/loft window-check --model "$model" --data assets/samples/support-chat.jsonl \
    --train-steps "$steps" --page train --runs-dir "$runs" --screenshot "$shot" --timeout-seconds 1200
rm -rf "$runs"
