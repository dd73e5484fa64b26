#!/usr/bin/env python3
"""Make the PEFT reference fixtures that Loft's LoRA tests compare against.

For each case (a tiny model from tests/fixtures/tiny/, made by make_model_fixtures.py, plus a LoRA config):
  tests/fixtures/lora/<case>/adapter/      the adapter as PEFT saves it (adapter_model.safetensors + adapter_config.json),
                                           with A and B both random (init_lora_weights=False) so every path counts
  tests/fixtures/lora/<case>/expected.safetensors
                                           input_ids, labels (-100 = masked), PEFT's logits, its loss, and the gradient
                                           of that loss for every lora_A / lora_B (keys "grad.<adapter key>")

Then, for each adapter that Loft saved under tests/fixtures/lora/loft-saved/<name>/ (the Rust tests write them with
LOFT_WRITE_FIXTURES=1), it loads the adapter with PeftModel.from_pretrained, fails on any missing or unexpected key,
and records PEFT's logits for the same input ids as peft_logits.safetensors beside it. When the adapter's base is a
bitsandbytes 4-bit folder (a QLoRA adapter), PEFT loads it twice — on the 4-bit base (bitsandbytes' exact CPU path)
and on the same base dequantized to f32 (`model.dequantize()`) — and records both ("logits", "logits_dequantized").

Usage: python scripts/make_lora_fixtures.py        (needs torch, transformers, peft, safetensors; bitsandbytes for
       QLoRA adapters)
"""
import json
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = {
    "llama-all-linear": dict(model="llama", r=4, lora_alpha=8, target_modules=ALL_LINEAR, use_rslora=False),
    "qwen2-attention-rslora": dict(model="qwen2", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], use_rslora=True),
    "gemma3-all-linear": dict(model="gemma3", r=2, lora_alpha=4, target_modules=ALL_LINEAR, use_rslora=False),
}

INPUT_IDS = [[1, 17, 200, 45, 99, 3, 77, 128, 5, 250, 64, 12], [1, 9, 8, 7, 6, 5, 4, 3, 2, 100, 101, 102]]
# Loss only on the "answer" part of each row, as completion-only training masks the prompt.
LABEL_FROM = [6, 4]


def labels_for(ids):
    labels = ids.clone()
    for row, start in enumerate(LABEL_FROM):
        labels[row, :start] = -100
    return labels


def relative_base(config_path, tiny_name):
    """Record the base model as a path relative to the repository root, not this machine's absolute one."""
    with open(config_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = f"tests/fixtures/tiny/{tiny_name}"
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=2)


def make_case(name, spec):
    out = os.path.join(ROOT, "lora", name)
    os.makedirs(out, exist_ok=True)
    base = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "tiny", spec["model"]), dtype=torch.float32)
    config = LoraConfig(
        r=spec["r"],
        lora_alpha=spec["lora_alpha"],
        lora_dropout=0.0,
        target_modules=spec["target_modules"],
        use_rslora=spec["use_rslora"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    model.eval()
    adapter_dir = os.path.join(out, "adapter")
    model.save_pretrained(adapter_dir)
    relative_base(os.path.join(adapter_dir, "adapter_config.json"), spec["model"])
    # PEFT also writes a model card; the fixture needs only the adapter itself.
    card = os.path.join(adapter_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    ids = torch.tensor(INPUT_IDS)
    labels = labels_for(ids)
    out_ = model(input_ids=ids, labels=labels)
    out_.loss.backward()
    tensors = {
        "input_ids": ids.to(torch.int64),
        "labels": labels.to(torch.int64),
        "logits": out_.logits.detach().float().contiguous(),
        "loss": out_.loss.detach().reshape(1).float(),
    }
    for pname, p in model.named_parameters():
        if p.requires_grad:
            # PEFT's saved key: drop the adapter name ("default") from the module path.
            key = pname.replace(".default", "")
            tensors["grad." + key] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    print(f"lora/{name}: loss {out_.loss.item():.6f}, {sum(1 for k in tensors if k.startswith('grad.'))} gradients")


def check_loft_saved():
    saved_root = os.path.join(ROOT, "lora", "loft-saved")
    if not os.path.isdir(saved_root):
        return
    for name in sorted(os.listdir(saved_root)):
        folder = os.path.join(saved_root, name)
        with open(os.path.join(folder, "adapter_config.json")) as f:
            cfg = json.load(f)
        base_path = os.path.join(ROOT, "..", "..", cfg["base_model_name_or_path"])
        with open(os.path.join(base_path, "config.json")) as f:
            quantized = "quantization_config" in json.load(f)
        ids = torch.tensor(INPUT_IDS)
        out = {"input_ids": ids.to(torch.int64), "logits": peft_logits(folder, base_path, ids, dequantize=False)}
        if quantized:
            out["logits_dequantized"] = peft_logits(folder, base_path, ids, dequantize=True)
        save_file(out, os.path.join(folder, "peft_logits.safetensors"))
        print(f"lora/loft-saved/{name}: PEFT loaded it with no missing or unexpected keys"
              + (" on the 4-bit and the dequantized base" if quantized else ""))


def peft_logits(folder, base_path, ids, dequantize):
    """PEFT's logits for the adapter in `folder` on the model in `base_path` (a bitsandbytes 4-bit folder loads
    4-bit, or dequantized to f32 with `dequantize`), failing on any missing or unexpected adapter key."""
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if dequantize:
        base = base.dequantize()
    for module in base.modules():
        # bitsandbytes' AVX512-BF16 inference kernel rounds the absmax to bf16; take the exact path.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    model = PeftModel.from_pretrained(base, folder)
    # from_pretrained only warns about key mismatches: load again strictly and fail on any.
    state = load_file(os.path.join(folder, "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        sys.exit(f"{folder}: unexpected keys {unexpected}, missing keys {missing}")
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float().contiguous()


if __name__ == "__main__":
    for case, spec in CASES.items():
        make_case(case, spec)
    check_loft_saved()
