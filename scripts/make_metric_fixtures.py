#!/usr/bin/env python3
"""Make the reference scores that Loft's evaluation metrics are tested against.

For ~40 varied (answer, reference) pairs (punctuation, Unicode, empty strings, JSON, articles, repeats) it
writes tests/fixtures/eval/metrics.json with, per pair:
  rouge_l   ROUGE-L F-measure from Google's `rouge-score` package,
            RougeScorer(['rougeL'], use_stemmer=False).score(target=reference, prediction=answer)
  token_f1  SQuAD's token F1, by the official evaluation script's normalize_answer / f1_score (copied
            below), with the SQuAD v2.0 script's rule for empty answers

The Rust test `engine::eval::metrics::tests::agrees_with_reference_implementations` asserts agreement within
1e-9 for every pair.

Usage: python scripts/make_metric_fixtures.py        (needs `pip install rouge-score`)
"""
import collections
import json
import os
import re
import string

import rouge_score
from rouge_score import rouge_scorer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "eval", "metrics.json")


# --- SQuAD v1.1 official evaluation script (evaluate-v1.1.py, https://rajpurkar.github.io/SQuAD-explorer/),
# --- normalize_answer and f1_score verbatim.


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


# --- End of the v1.1 script.


def token_f1(prediction, ground_truth):
    """v1.1's f1_score, except that an empty side is handled as SQuAD v2.0's evaluate-v2.0.py compute_f1
    does: `if len(gold_toks) == 0 or len(pred_toks) == 0: return int(gold_toks == pred_toks)`."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    if len(prediction_tokens) == 0 or len(ground_truth_tokens) == 0:
        return float(prediction_tokens == ground_truth_tokens)
    return float(f1_score(prediction, ground_truth))


# (answer, reference)
PAIRS = [
    # Plain text and articles.
    ("The cat sat on the mat.", "A cat is on the mat"),
    ("Paris", "Paris"),
    ("paris!", "Paris"),
    ("It is Paris, the capital of France.", "Paris"),
    ("the the the", "a an the"),
    ("An apple a day keeps the doctor away", "an apple keeps doctors away"),
    ("Theatre, an anthem, A-team", "the theatre anthem a team"),
    ("the end", "The End."),
    # Order and repeats.
    ("b a", "a b"),
    ("x x x y", "x y y"),
    ("one two three four five six", "six five four three two one"),
    ("police killed the gunman", "the gunman was shot down by police"),
    ("the cat was found under the bed", "the cat was under the bed"),
    # Punctuation inside and between words.
    ("Don't stop—the music!", "do not stop the music"),
    ("well-known e-mail address: ada@example.com", "well known email address ada example com"),
    ("snake_case_name and camelCase", "snake case name and camelcase"),
    ("3.14159 is pi; 2,718 is not e.", "pi is 3.14159"),
    ("(a) yes (b) no", "yes, no"),
    ("...", "?!"),
    ("C++ and C# and F#", "c and c and f"),
    # Whitespace.
    ("  leading   and\ttrailing\n", "leading and trailing"),
    ("line one\nline two\r\nline three", "line one line two"),
    ("non\u00a0breaking\u2003spaces", "non breaking spaces"),
    ("sep\x1cinfo\x1fseparators", "sep info separators"),
    # Unicode.
    ("Café au lait", "cafe au lait"),
    ("Ελληνικά ΟΔΟΣ", "ελληνικά οδος"),
    ("İstanbul", "istanbul"),
    ("東京 is the capital", "東京 capital"),
    ("naïve résumé", "naive resume"),
    ("\u201cquoted\u201d words \u2018here\u2019", "quoted words here"),
    ("emoji 🎉 party 🎉", "emoji party"),
    ("The\u0301 combining mark", "combining mark"),
    ("Ⅻ o'clock and ½ past", "12 o clock and half past"),
    # Empty strings.
    ("", ""),
    ("", "Paris"),
    ("Paris", ""),
    ("   ", "the"),
    ("a", "an"),
    # JSON answers.
    ('{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}'),
    ('```json\n{"name": "Ada", "age": 36.0}\n```', '{"age": 36, "name": "Ada"}'),
    ('{"items": ["a", "b", "c"], "total": 3}', '{"total": 3, "items": ["a", "b"]}'),
    ('[1, 2, 3]', '[3, 2, 1]'),
    # Longer answers.
    (
        "I'm sorry, but I cannot help with that request. As an AI language model, I do not have access.",
        "The order number is 12345 and it ships tomorrow.",
    ),
    (
        "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
        "Mitochondria produce ATP, the energy currency of the cell, by cellular respiration.",
    ),
]


def main():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = []
    for answer, reference in PAIRS:
        cases.append(
            {
                "answer": answer,
                "reference": reference,
                "rouge_l": scorer.score(reference, answer)["rougeL"].fmeasure,
                "token_f1": token_f1(answer, reference),
            }
        )
    version = getattr(rouge_score, "__version__", None)
    if version is None:
        from importlib.metadata import version as package_version

        version = package_version("rouge-score")
    fixture = {
        "generator": "scripts/make_metric_fixtures.py",
        "rouge_score_version": version,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    tmp = OUT + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, OUT)
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
