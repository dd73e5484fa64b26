#!/usr/bin/env python3
"""The reference side of scripts/bench_eval.sh: transformers' batched greedy `generate` on the same prompts.

Each prompt is the row's conversation up to its last assistant message, through the chat template with the
generation prompt; batches are left-padded as transformers recommends for decoder-only models. New tokens
count up to and including the first end-of-sequence token of each row (padding after it is not counted).
Prints one line: new tokens and tokens/s over the whole generation.
Usage: bench_eval_reference.py HF_FOLDER ROWS.jsonl MAX_NEW_TOKENS BATCH
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, rows_path, max_new, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(os.cpu_count() or 1)
tok = AutoTokenizer.from_pretrained(folder)
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.eval()
prompts = []
with open(rows_path) as f:
    for line in f:
        messages = json.loads(line)["messages"]
        prompts.append(tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
eos = model.generation_config.eos_token_id
eos = set(eos if isinstance(eos, list) else [eos])
with torch.no_grad():
    warm = tok(prompts[:2], return_tensors="pt", padding=True, add_special_tokens=False)
    model.generate(**warm, max_new_tokens=2, do_sample=False)
    new = 0
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        for row in out[:, enc.input_ids.shape[1]:].tolist():
            n = 0
            for t in row:
                n += 1
                if t in eos:
                    break
            new += n
    seconds = time.perf_counter() - start
print(f"transformers  {new} new tokens at {new / seconds:.1f} tokens/s")
