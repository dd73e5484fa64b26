"""The Hugging Face Python path on the same rows as `benches/data.rs`, for comparison.

    cargo bench --bench data -- --out /tmp/chat-100k.jsonl      # writes the rows, prints Loft's figures
    python scripts/bench_data_reference.py /tmp/chat-100k.jsonl  # needs: datasets, transformers, tokenizers

It does the same work as Loft: load the JSON Lines with `datasets.load_dataset("json")`, drop exact
duplicate conversations (keeping the first), render each conversation with transformers' chat template,
tokenize with offsets (`add_special_tokens=False`) and mark the assistant tokens with Loft's rule (render
the conversation cut before each assistant turn with the generation prompt; train on the content and the
end-of-turn token after it; a token is trained when its span overlaps). Rows longer than --max-seq-len are
dropped. The totals it prints — examples, tokens, trained tokens — must equal Loft's: a cross-check of
minijinja against jinja2 and of the Rust tokenizer against the Python one, on every row.
"""

import argparse
import json
import os
import resource
import tempfile
import time

from datasets import load_dataset
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def assistant_spans(tok, specials, messages):
    full = tok.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not upto.startswith(prompt) or not full.startswith(upto):
            raise ValueError("template breaks the prefix property; the reference implements only the main path")
        turn = upto[len(prompt):]
        at = turn.find(m["content"])
        start, end = len(prompt) + at, len(prompt) + at + len(m["content"])
        rest = upto[end:]
        stripped = rest.lstrip()
        for s in specials:
            if stripped.startswith(s):
                end += len(rest) - len(stripped) + len(s)
                break
        spans.append((start, end))
    return full, spans


def main():
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--model", default=os.path.join(HERE, "..", "tests", "fixtures", "smollm2"))
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = p.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    specials = sorted(set(tok.all_special_tokens) | {tok.eos_token}, key=lambda s: (-len(s), s))

    def encode(batch):
        out = {"n": [], "trained": []}
        for messages in batch["messages"]:
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
            full, spans = assistant_spans(tok, specials, messages)
            enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
            mask = [any(s < e2 and e > s2 for s2, e2 in spans) if s != e else any(s2 <= s < e2 for s2, e2 in spans)
                    for s, e in enc["offset_mapping"]]
            out["n"].append(len(enc["input_ids"]))
            out["trained"].append(sum(mask))
        return out

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        ds = load_dataset("json", data_files=args.data, split="train", cache_dir=cache)
        t_load = time.perf_counter()
        rows = len(ds)
        seen, keep = set(), []
        for i, messages in enumerate(ds["messages"]):
            key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            has_answer = any(m["role"] == "assistant" and m["content"].strip() for m in messages)
            if has_answer and key not in seen:
                seen.add(key)
                keep.append(i)
        ds = ds.select(keep)
        t_check = time.perf_counter()
        enc = ds.map(encode, batched=True, batch_size=256, num_proc=args.num_proc, remove_columns=ds.column_names)
        lengths, trained = enc["n"], enc["trained"]
        t_enc = time.perf_counter()
    kept = [(n, t) for n, t in zip(lengths, trained) if n <= args.max_seq_len]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    total = t_enc - t0
    print(f"rows {rows}, after dedupe {len(keep)}, processes {args.num_proc}")
    print(f"load_dataset:      {t_load - t0:8.2f} s  {rows / (t_load - t0):9.0f} rows/s")
    print(f"dedupe + checks:   {t_check - t_load:8.2f} s")
    print(f"render + tokenize: {t_enc - t_check:8.2f} s  {len(keep) / (t_enc - t_check):9.0f} rows/s  {sum(lengths) / (t_enc - t_check):9.0f} tokens/s")
    print(f"total:             {total:8.2f} s  {rows / total:9.0f} rows/s")
    print(f"peak RSS: main process {own:.0f} MiB, largest worker {children:.0f} MiB")
    print(f"[{len(kept)} examples, {sum(n for n, _ in kept)} tokens, {sum(t for _, t in kept)} trained, {len(lengths) - len(kept)} over {args.max_seq_len}]")


if __name__ == "__main__":
    main()
