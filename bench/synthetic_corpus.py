"""A synthetic corpus for the benchmarks and the memory-plan test: words of random letters drawn
Zipf-like from a fixed vocabulary; tokenizer.txt (lines of 20 words to train a BPE on),
dense.jsonl ({"text"} documents) and an SFT file ({"conversation"} of 20-150 words, a third of
them the human's). Seeded, so every run writes the same files.

usage: synthetic_corpus.py DIR --vocab N --tokenizer-lines N --dense DOCS WORDS --sft N [--sft-file NAME]
"""
import argparse
import json
import random

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--vocab", type=int, required=True)
p.add_argument("--tokenizer-lines", type=int, required=True)
p.add_argument("--dense", type=int, nargs=2, metavar=("DOCS", "WORDS"), required=True)
p.add_argument("--sft", type=int, required=True)
p.add_argument("--sft-file", default="sft.jsonl")
a = p.parse_args()

rng = random.Random(0)
letters = "abcdefghijklmnopqrstuvwxyz"
vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(a.vocab)]
weights = [1.0 / (i + 1) for i in range(len(vocab))]


def words(n):
    return " ".join(rng.choices(vocab, weights, k=n))


with open(f"{a.dir}/tokenizer.txt", "w") as f:
    for _ in range(a.tokenizer_lines):
        f.write(words(20) + "\n")
with open(f"{a.dir}/dense.jsonl", "w") as f:
    for _ in range(a.dense[0]):
        f.write(json.dumps({"text": words(a.dense[1])}) + "\n")
with open(f"{a.dir}/{a.sft_file}", "w") as f:
    for _ in range(a.sft):
        n = rng.randint(20, 150)
        f.write(json.dumps({"conversation": [{"human": words(n // 3), "assistant": words(n - n // 3)}]}) + "\n")
