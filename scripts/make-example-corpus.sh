#!/usr/bin/env bash
# Builds kiln's bundled example corpus from the Debian `fortunes` (English, BSD) and
# `fortunes-zh` (Chinese, GPL: generated at setup time, never committed) packages:
#   OUTDIR/en.jsonl  OUTDIR/zh.jsonl   pretraining text, {"text": ...} per fortune
#   OUTDIR/sft.jsonl                   Firefly conversations made from the same text
#                                      ("continue this poem: first line" -> the rest; multi-turn)
#   OUTDIR/eval.jsonl                  held-out fortunes (every 20th), never in the files above
#   OUTDIR/data.json                   {"en.jsonl": 1.0, "zh.jsonl": 1.0}
#   OUTDIR/tokenizer.model             a 2000-piece sentencepiece BPE (`kiln tokenizer train`)
# usage: scripts/make-example-corpus.sh OUTDIR   (KILN=path/to/kiln, default build/kiln)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: make-example-corpus.sh OUTDIR}
kiln=${KILN:-$here/build/kiln}
fortunes=${FORTUNES_DIR:-/usr/share/games/fortunes}
for f in fortunes tang300.u8 song100.u8 chinese.u8; do
  [ -e "$fortunes/$f" ] || { echo "make-example-corpus: $fortunes/$f missing (apt-get install fortunes fortunes-zh)" >&2; exit 2; }
done
mkdir -p "$out"
tmp=$(mktemp -d "$out/.corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

python3 - "$fortunes" "$tmp" <<'PY'
import json, os, re, sys
src, out = sys.argv[1], sys.argv[2]
ansi = re.compile(r"\x1b\[[0-9;]*m")
zh_files = ["chinese.u8", "tang300.u8", "song100.u8"]
skip = set(zh_files) | {"ascii-art.u8", "art.u8"}
en_files = sorted(f for f in os.listdir(src) if f.endswith(".u8") and f not in skip)

def fortunes(name):
    with open(os.path.join(src, name), encoding="utf-8", errors="replace") as f:
        text = ansi.sub("", f.read())
    for chunk in text.split("\n%\n"):
        chunk = chunk.strip("%\n").rstrip()
        if chunk.strip():
            yield chunk

def write(path, rows):
    with open(os.path.join(out, path), "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")

evals, sft = [], []
for lang, files in (("en", en_files), ("zh", zh_files)):
    train = []
    for name in files:
        for i, text in enumerate(fortunes(name)):
            (evals if i % 20 == 19 else train).append({"text": text})
    write(lang + ".jsonl", train)
    # SFT from the same training text: the first line asks, the rest answers; longer pieces
    # become two turns (first line -> second line, then "go on" -> the rest).
    ask = "Continue this: " if lang == "en" else "续写：" 
    more = "Go on." if lang == "en" else "请继续。"
    for i, row in enumerate(train):
        lines = [l for l in row["text"].split("\n") if l.strip()]
        if len(lines) < 2 or i % 4:
            continue
        if len(lines) >= 4 and i % 8 == 0:
            conv = [{"human": ask + lines[0], "assistant": lines[1]},
                    {"human": more, "assistant": "\n".join(lines[2:])}]
        else:
            conv = [{"human": ask + lines[0], "assistant": "\n".join(lines[1:])}]
        sft.append({"conversation": conv})
write("eval.jsonl", evals)
write("sft.jsonl", sft)
with open(os.path.join(out, "data.json"), "w") as f:
    json.dump({"en.jsonl": 1.0, "zh.jsonl": 1.0}, f, indent=1)
    f.write("\n")
PY

"$kiln" tokenizer train --input "$tmp/en.jsonl,$tmp/zh.jsonl" --out "$tmp/tokenizer" --vocab-size 2000 \
  --max-sentences 60000 --character-coverage 0.98
for f in en.jsonl zh.jsonl sft.jsonl eval.jsonl data.json tokenizer.model tokenizer.vocab; do
  mv -f "$tmp/$f" "$out/$f"
done
wc -l "$out"/*.jsonl >&2
