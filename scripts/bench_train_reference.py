#!/usr/bin/env python3
"""The reference side of scripts/bench_train.sh: PyTorch + PEFT optimizer steps with the settings Loft's
trainer uses by default, as `loft bench-train` times them: micro-batches of BATCH x SEQ tokens, GRAD_ACCUM of
them per step (loss averaged over the step's tokens), LoRA r on all linear layers with alpha 2r and dropout
0.05, gradients clipped to norm 1.0, AdamW (no weight decay). Prints seconds per step (wall clock and CPU),
tokens/s and peak RSS.

With --qlora the base is loaded through bitsandbytes as QLoRA does it (NF4, double quantization, f32 compute,
`prepare_model_for_kbit_training`), the side `loft bench-train --method qlora` is compared with. Needs
bitsandbytes (pip install bitsandbytes) for that.

Usage: bench_train_reference.py MODEL (HF folder, or a .gguf file) [--batch 4] [--seq 256] [--grad-accum 4]
       [--rank 16] [--dropout 0.05] [--max-grad-norm 1.0] [--steps 3] [--qlora] [--gradient-checkpointing]
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
p.add_argument("--grad-accum", type=int, default=4)
p.add_argument("--rank", type=int, default=16)
p.add_argument("--dropout", type=float, default=0.05)
p.add_argument("--max-grad-norm", type=float, default=1.0)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--qlora", action="store_true")
p.add_argument("--gradient-checkpointing", action="store_true")
a = p.parse_args()
torch.set_num_threads(os.cpu_count() or 1)
torch.manual_seed(42)
load = dict(dtype=torch.float32)
if a.qlora:
    from transformers import BitsAndBytesConfig
    load["quantization_config"] = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32)
if a.model.endswith(".gguf"):
    folder, name = os.path.split(os.path.abspath(a.model))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **load)
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, **load)
if a.qlora:
    from peft import prepare_model_for_kbit_training
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gradient_checkpointing)
elif a.gradient_checkpointing:
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
config = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=a.dropout, task_type="CAUSAL_LM",
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, config)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
vocab = model.config.vocab_size
# The same token ids as `loft bench-train`: position i of the whole step is (i * 7919) mod (vocab - 152).
step_ids = (torch.arange(a.batch * a.grad_accum * a.seq) * 7919 % (vocab - 152)).reshape(
    a.grad_accum, a.batch, a.seq)
times, cpu_times = [], []
for step in range(a.steps):
    t0, c0 = time.perf_counter(), time.process_time()
    for ids in step_ids:
        # Every micro-batch has the same number of trained tokens, so the mean over the step's tokens is
        # the mean of the micro-batches' means.
        loss = model(input_ids=ids, labels=ids).loss / a.grad_accum
        loss.backward()
    if a.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
steady = lambda v: sum(v[1:] or v) / len(v[1:] or v)
per_step, cpu_per_step = steady(times), steady(cpu_times)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tokens = a.batch * a.grad_accum * a.seq
label = "pytorch+peft+bnb qlora" if a.qlora else "pytorch+peft lora"
label += " (ckpt)" if a.gradient_checkpointing else ""
print(f"{label:<29} {a.batch}x{a.seq} tokens x {a.grad_accum} micro-batches, r={a.rank}, dropout {a.dropout}, "
      f"clip {a.max_grad_norm}: {per_step:.2f} s/step, {tokens / per_step:.0f} tokens/s, {cpu_per_step:.2f} CPU s/step, "
      f"peak RSS {peak / 1e9:.2f} GB (torch {torch.__version__})")
