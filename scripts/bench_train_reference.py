#!/usr/bin/env python3
"""The reference side of scripts/bench_train.sh: PyTorch + PEFT training steps on the same model, batch and
LoRA settings as Loft's `loft bench-train`. Prints tokens/s and peak RSS.

Usage: bench_train_reference.py MODEL (HF folder, or a .gguf file) [--batch 4] [--seq 256] [--rank 16] [--steps 5]
"""
import argparse
import os
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--batch", type=int, default=4)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--steps", type=int, default=5)
a = p.parse_args()
torch.set_num_threads(os.cpu_count() or 1)
if a.model.endswith(".gguf"):
    folder, name = os.path.split(os.path.abspath(a.model))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
config = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, config)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
vocab = model.config.vocab_size
ids = (torch.arange(a.batch * a.seq) * 7919 % (vocab - 152)).reshape(a.batch, a.seq)
times = []
for step in range(a.steps):
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
steady = times[1:] or times
per_step = sum(steady) / len(steady)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"pytorch+peft  {a.batch}x{a.seq} tokens, r={a.rank}: {per_step:.2f} s/step, "
      f"{a.batch * a.seq / per_step:.0f} tokens/s, peak RSS {peak / 1e9:.2f} GB (torch {torch.__version__})")
