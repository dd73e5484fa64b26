#!/usr/bin/env python3
"""Make tests/fixtures/tiny-chat: a complete, tiny Hugging Face chat model folder for fast end-to-end tests
(the app's UI tests train it for a few steps in seconds).

It is a random Llama (2 layers, hidden 64, seeded) with a real byte-level BPE tokenizer trained on the
bundled sample datasets (512 tokens, ChatML special tokens) and a ChatML chat template, saved exactly as
transformers saves it, so Loft opens it like any model folder from the hub.

Usage: python scripts/make_tiny_chat_model.py
Needs: torch, transformers, tokenizers (pip install torch transformers tokenizers).
"""
import json
import os
import shutil

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tiny-chat")
SAMPLES = os.path.join(ROOT, "assets", "samples")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def sample_texts():
    with open(os.path.join(SAMPLES, "support-chat.jsonl"), encoding="utf-8") as f:
        for line in f:
            for m in json.loads(line)["messages"]:
                yield m["content"]
    with open(os.path.join(SAMPLES, "support-instruction.json"), encoding="utf-8") as f:
        for row in json.load(f):
            for key in ("instruction", "input", "output"):
                if row.get(key):
                    yield row[key]


def main():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(sample_texts(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.token_to_id("<|im_end|>"),
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    fast.save_pretrained(OUT)
    print(f"wrote {OUT}: vocab {config.vocab_size}, {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
