#!/usr/bin/env python3
"""Make the reference fixtures that Loft's model tests compare against.

What it writes (all under tests/fixtures/, all committed):

  tiny/<arch>/            a tiny random model of each supported architecture, saved by transformers
                          (config.json + safetensors), and expected.safetensors holding the input ids and
                          transformers' f32 logits at every position. tiny/llama also gets config.tf4.json, the
                          same config in transformers-4 style (rope_theta + rope_scaling), and tiny/qwen2 is saved
                          in shards with an index.
  smollm2/                the small files of the Hugging Face folder that transformers makes from the SmolLM2 GGUF
                          (config, tokenizer, tokenizer_config, generation_config, chat template), plus:
  smollm2/reference.json  3 chat prompts: rendered text, prompt ids, greedy 32-token continuation; and a checksum
                          per weight tensor (sum, sum of squares, first values, and for q/k the first values of
                          rows that llama.cpp's permutation moves) so a loaded or converted model can be checked
  smollm2/logits.safetensors  transformers' last-token logits for those prompts, f32

Usage: python scripts/make_model_fixtures.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
       python scripts/make_model_fixtures.py --weights-only PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
         (rewrites only the weight checksums in smollm2/reference.json)
Needs: torch, transformers, gguf, safetensors (pip install torch transformers gguf safetensors).
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a terse assistant. Answer in one sentence."},
        {"role": "user", "content": "Why is the sky blue?"},
    ],
    [
        {"role": "user", "content": "Write a haiku about autumn leaves."},
        {"role": "assistant", "content": "Red leaves drift and fall,\nwhispering to the cold ground,\nsummer says goodbye."},
        {"role": "user", "content": "Now one about snow."},
    ],
]

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

TINY = {
    "llama": dict(
        model_type="llama",
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=True,
    ),
    "mistral": dict(model_type="mistral", rope_theta=10000.0, head_dim=16, sliding_window=None),
    "qwen2": dict(model_type="qwen2", rope_theta=1000000.0, use_sliding_window=False),
    "qwen3": dict(model_type="qwen3", rope_theta=1000000.0, head_dim=32, attention_bias=False),
    "gemma3": dict(
        model_type="gemma3_text",
        head_dim=16,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        sliding_window=4,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
    ),
}

INPUT_IDS = [[1, 17, 200, 45, 99, 3, 77, 128, 5, 250, 64, 12]]


def rope_theta_of(cfg):
    """The base frequency, wherever this transformers version keeps it."""
    params = getattr(cfg, "rope_parameters", None)
    if isinstance(params, dict):
        if "rope_theta" in params:
            return params["rope_theta"]
        if "full_attention" in params:
            return params["full_attention"]["rope_theta"]
    return cfg.rope_theta


def make_tiny():
    for arch, extra in TINY.items():
        out = os.path.join(ROOT, "tiny", arch)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        kwargs = dict(COMMON)
        kwargs.update(extra)
        model_type = kwargs.pop("model_type")
        config = AutoConfig.for_model(model_type, **kwargs)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # Random init leaves norms at 1 and biases at 0; perturb them so the test sees every weight.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        model.eval()
        shard = "200KB" if arch == "qwen2" else "100GB"
        model.save_pretrained(out, safe_serialization=True, max_shard_size=shard)
        ids = torch.tensor(INPUT_IDS)
        with torch.no_grad():
            logits = model(ids).logits.float().contiguous()
        save_file({"input_ids": ids.to(torch.int64), "logits": logits}, os.path.join(out, "expected.safetensors"))
        if arch == "llama":
            write_tf4_config(out, config)
        print(f"tiny/{arch}: {sum(p.numel() for p in model.parameters())} parameters")


def write_tf4_config(out, config):
    """The same llama config as transformers 4 wrote it: rope_theta and rope_scaling at the top level."""
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    params = cfg.pop("rope_parameters", None)
    if params is not None:
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = params if params.get("rope_type") not in (None, "default") else None
    else:
        cfg["rope_scaling"] = dict(cfg["rope_scaling"])
    cfg["rope_scaling"]["type"] = cfg["rope_scaling"]["rope_type"]
    cfg["transformers_version"] = "4.46.0"
    with open(os.path.join(out, "config.tf4.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def tensor_checksum(t):
    t = t.detach().float().flatten()
    return {
        "shape": list(t.shape),
        "sum": float(t.double().sum()),
        "sumsq": float((t.double() ** 2).sum()),
        "head": [float(x) for x in t[:4]],
    }


def weight_checksums(model):
    """A checksum per weight tensor. Sums and the first values cannot see a permutation of rows, and
    llama.cpp stores q_proj/k_proj with each head's rows interleaved (row 0 stays, row 1 moves to 2, row
    head_dim/2 to 1), so the first values of those moved rows are recorded too."""
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    out = {}
    for name, p in model.state_dict().items():
        out[name] = tensor_checksum(p)
        if name.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            out[name]["rows"] = {str(r): [float(x) for x in p[r, :8].float()] for r in (1, head_dim // 2)}
    return out


def update_weight_checksums(gguf_path):
    """Rewrite only the weight checksums of smollm2/reference.json (the prompts and logits stay)."""
    folder, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    path = os.path.join(ROOT, "smollm2", "reference.json")
    with open(path) as f:
        ref = json.load(f)
    ref["weights"] = weight_checksums(model)
    with open(path, "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    print(f"smollm2/reference.json: weight checksums from transformers {transformers.__version__}")


def make_smollm2(gguf_path):
    out = os.path.join(ROOT, "smollm2")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    # transformers refuses to save a model it loaded from GGUF; copy the weights into a plain one.
    plain_config = type(model.config).from_dict(model.config.to_dict())
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        for f in sorted(os.listdir(tmp)):
            if not f.endswith(".safetensors") and not f.endswith(".index.json"):
                shutil.copy(os.path.join(tmp, f), os.path.join(out, f))
    ref = {"transformers_version": transformers.__version__, "gguf": name, "prompts": [], "weights": {}}
    all_logits = {}
    for i, messages in enumerate(PROMPTS):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0, -1].float().contiguous()
            gen = model.generate(ids, max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(ids))
        new = gen[0, ids.shape[1]:].tolist()
        ref["prompts"].append({
            "messages": messages,
            "text": text,
            "input_ids": ids[0].tolist(),
            "greedy_ids": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
        })
        all_logits[f"prompt{i}"] = logits
    ref["weights"] = weight_checksums(model)
    ref["rope_theta"] = rope_theta_of(model.config)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
    save_file(all_logits, os.path.join(out, "logits.safetensors"))
    print(f"smollm2: transformers {transformers.__version__}, files {sorted(os.listdir(out))}")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    if len(sys.argv) == 3 and sys.argv[1] == "--weights-only":
        update_weight_checksums(sys.argv[2])
    elif len(sys.argv) == 2:
        make_tiny()
        make_smollm2(sys.argv[1])
    else:
        sys.exit(__doc__)
