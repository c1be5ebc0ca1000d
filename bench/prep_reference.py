"""Reference for bench/prep.sh: the plain Python loop kiln prep replaces.

Reads JSONL pretraining files ({"text": ...}), tokenizes each line with sentencepiece as
<s> text </s> (what kiln prep stores for the text format), and appends int32 ids to OUT.
Prints one JSON line: tokens, docs, seconds, tokens_per_second.
usage: prep_reference.py TOKENIZER.model OUT.bin FILE.jsonl [FILE.jsonl ...]
"""
import array
import json
import sys
import time

import sentencepiece as spm


def main():
    model, out, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]
    sp = spm.SentencePieceProcessor(model_file=model)
    bos, eos = sp.bos_id(), sp.eos_id()
    start = time.perf_counter()
    tokens = docs = 0
    with open(out, "wb") as f:
        for path in inputs:
            with open(path, encoding="utf-8") as lines:
                for line in lines:
                    if not line.strip():
                        continue
                    ids = [bos] + sp.encode(json.loads(line)["text"]) + [eos]
                    array.array("i", ids).tofile(f)
                    tokens += len(ids)
                    docs += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": tokens, "docs": docs, "seconds": seconds,
                      "tokens_per_second": tokens / seconds}))


if __name__ == "__main__":
    main()
