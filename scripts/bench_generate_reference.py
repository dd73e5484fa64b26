#!/usr/bin/env python3
"""The reference side of scripts/bench_generate.sh: transformers on the same folder, prompt and token budget.

Prints one line: load seconds, prompt tokens, new tokens, prefill seconds, decode tokens/s.
Usage: bench_generate_reference.py HF_FOLDER PROMPT MAX_NEW_TOKENS
"""
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompt, max_new = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(os.cpu_count() or 1)
start = time.perf_counter()
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.eval()
load = time.perf_counter() - start
text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
mask = torch.ones_like(ids)
with torch.no_grad():
    model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False)  # warm-up
    t0 = time.perf_counter()
    model(ids)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    total = time.perf_counter() - t0
new = out.shape[1] - ids.shape[1]
print(f"transformers {load:.2f} s load · prompt {ids.shape[1]} tokens in {prefill:.2f} s · "
      f"{new} new tokens at {(new - 1) / max(total - prefill, 1e-9):.1f} tokens/s")
