"""Reference for bench/prep.sh: the plain Python loop kiln prep replaces.

Reads JSONL pretraining files ({"text": ...}), tokenizes each line with sentencepiece as
<s> text </s> (what kiln prep stores for the text format), and appends int32 ids to OUT.
With --workers N > 1 the lines go to a multiprocessing pool of N processes in ordered chunks
(`Pool.imap`, as a user would parallelise the loop); the ids come back in input order.
Prints one JSON line: tokens, docs, seconds, tokens_per_second, workers.
usage: prep_reference.py [--workers N] TOKENIZER.model OUT.bin FILE.jsonl [FILE.jsonl ...]
"""
import array
import itertools
import json
import multiprocessing
import sys
import time

import sentencepiece as spm

_sp = None


def _init(model):
    global _sp
    _sp = spm.SentencePieceProcessor(model_file=model)


def _encode_chunk(lines):
    bos, eos = _sp.bos_id(), _sp.eos_id()
    out = array.array("i")
    docs = 0
    for line in lines:
        if not line.strip():
            continue
        out.append(bos)
        out.extend(_sp.encode(json.loads(line)["text"]))
        out.append(eos)
        docs += 1
    return out.tobytes(), len(out), docs


def _chunks(inputs, size):
    for path in inputs:
        with open(path, encoding="utf-8") as lines:
            while True:
                chunk = list(itertools.islice(lines, size))
                if not chunk:
                    break
                yield chunk


def main():
    args = sys.argv[1:]
    workers = 1
    if args[:1] == ["--workers"]:
        workers, args = int(args[1]), args[2:]
    model, out, inputs = args[0], args[1], args[2:]
    start = time.perf_counter()
    tokens = docs = 0
    with open(out, "wb") as f:
        if workers == 1:
            _init(model)
            results = map(_encode_chunk, _chunks(inputs, 1000))
            pool = None
        else:
            pool = multiprocessing.Pool(workers, initializer=_init, initargs=(model,))
            results = pool.imap(_encode_chunk, _chunks(inputs, 1000))
        for data, n, d in results:
            f.write(data)
            tokens += n
            docs += d
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - start
    print(json.dumps({"tokens": tokens, "docs": docs, "seconds": seconds,
                      "tokens_per_second": tokens / seconds, "workers": workers}))


if __name__ == "__main__":
    main()
