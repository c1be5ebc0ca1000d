# The PyTorch reference for bench/cpu.sh: transformers LlamaForCausalLM (SDPA attention) trained
# with torch.optim.AdamW(foreach=True) and gradient clipping, fp32 on the CPU, eager or under
# torch.compile. Random tokens; for the packed case, rows packed from documents whose lengths
# come from DOC_LENS (one integer per line, the lengths kiln's packer produced) with position_ids
# restarting at each document (transformers then builds the block-diagonal causal mask) and the
# loss on a fraction of tokens, as in SFT.
#
#   python cpu_reference.py MODE CASE STEPS WARMUP [DOC_LENS]     MODE: eager | compile
#
# Prints one JSON line: {"mode", "case", "tokens_per_s" (median over timed steps), "peak_rss_gib"}.
import json, random, resource, statistics, sys, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

mode, case, steps, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
doc_lens = [int(x) for x in open(sys.argv[5])] if len(sys.argv) > 5 else []
B, T, V = 4, 512, 4000
torch.manual_seed(0)
conf = LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4, vocab_size=V, max_position_embeddings=T, rms_norm_eps=1e-5,
                   tie_word_embeddings=False, attn_implementation="sdpa")
model = LlamaForCausalLM(conf)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
fwd = torch.compile(model) if mode == "compile" else model
rng = random.Random(0)


def batch():
    ids = torch.randint(0, V, (B, T))
    if case != "packed":
        return ids, ids.clone(), None
    pos = torch.zeros(B, T, dtype=torch.long)
    labels = ids.clone()
    for b in range(B):
        t = 0
        while t < T:
            n = min(rng.choice(doc_lens), T - t)
            pos[b, t:t + n] = torch.arange(n)
            labels[b, t:t + n // 3] = -100  # the prompt: no loss
            t += n
    return ids, labels, pos


rates = []
for step in range(warmup + steps):
    ids, labels, pos = batch()
    t0 = time.perf_counter()
    out = fwd(input_ids=ids, labels=labels, position_ids=pos)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dt = time.perf_counter() - t0
    if step >= warmup:
        rates.append(B * T / dt)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
print(json.dumps({"mode": mode, "case": case, "tokens_per_s": round(statistics.median(rates)),
                  "peak_rss_gib": round(peak, 2)}))
