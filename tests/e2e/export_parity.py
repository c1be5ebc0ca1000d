"""Export parity checks for tests/e2e/test_export_transformers.sh (run with the test python).

    export_parity.py check DIR LOGITS [--like HF_DIR]
        transformers' AutoConfig and LlamaForCausalLM load DIR (a `kiln export`), and its logits
        on LOGITS' input_ids match kiln's (max |a - b| / max |b| <= 1e-4; LOGITS is written by
        build/kiln_test_logits). --like: DIR's config, as AutoConfig reads it, agrees with the
        config of HF_DIR (the fixture kiln imported) on every field that shapes the model.
    export_parity.py mutate DIR LOGITS
        applies each mutation below to a copy of DIR and shows that `check` now fails for each;
        exits 1 if any mutation still passes.
    export_parity.py suite < CASES
        one process for many cases: each line of CASES is "DIR LOGITS [HF_DIR]"; runs check
        and mutate on each; exits 1 if any check fails or any mutation passes.
    export_parity.py baichuan LLAMA_DIR OUT_DIR
        writes LLAMA_DIR (no GQA) as a Baichuan-7B directory: model_type baichuan, q/k/v fused
        into W_pack. transformers has no Baichuan class (only remote code), so the test compares
        kiln's Llama export of it with the logits kiln computes.
    export_parity.py fixture OUT_DIR
        a tiny random LlamaForCausalLM without GQA (the source of the Baichuan case).
    export_parity.py greedy DIR TOKENIZER PROMPT N
        prints PROMPT and transformers' greedy continuation of it from DIR, up to N tokens
        (stopping at eos), as `kiln generate` prints it: the tests compare the two.
"""
import glob
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

TOL = 1e-4
SHAPE_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "tie_word_embeddings", "hidden_act", "attention_bias", "mlp_bias"]


def rope_of(cfg):
    # transformers 5 keeps rope_theta and the scaling in rope_parameters; 4.x in two keys.
    rp = getattr(cfg, "rope_parameters", None)
    if rp is None:
        rp = dict(getattr(cfg, "rope_scaling", None) or {"rope_type": "default"})
        rp["rope_theta"] = cfg.rope_theta
    rp = dict(rp)
    if rp.get("rope_type", rp.get("type")) == "default":
        return {"rope_type": "default", "rope_theta": float(rp["rope_theta"])}
    return rp


def load(d):
    from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM
    cfg = AutoConfig.from_pretrained(d)
    assert isinstance(cfg, LlamaConfig), f"AutoConfig read {type(cfg).__name__}, not LlamaConfig"
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return cfg, model


def compare(d, logits_file):
    """Relative error of transformers' logits on the export against kiln's."""
    want = load_file(logits_file)
    _, model = load(d)
    ids = want["input_ids"]
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        got = model(input_ids=ids, position_ids=pos, use_cache=False).logits.float()
    ref = want["logits"]
    assert got.shape == ref.shape, f"logits shape {tuple(got.shape)} vs kiln's {tuple(ref.shape)}"
    return ((got - ref).abs().max() / ref.abs().max()).item()


def check(d, logits_file, like=None):
    cfg, _ = load(d)
    if like:
        from transformers import AutoConfig
        ref = AutoConfig.from_pretrained(like)
        for f in SHAPE_FIELDS:
            a, b = getattr(cfg, f, None), getattr(ref, f, None)
            assert a == b, f"config.json {f}: exported {a!r}, fixture {b!r}"
        a, b = rope_of(cfg), rope_of(ref)
        assert a == b, f"config.json rope: exported {a}, fixture {b}"
        if a["rope_type"] == "dynamic":  # dynamic NTK grows against max_position_embeddings
            assert cfg.max_position_embeddings == ref.max_position_embeddings
    err = compare(d, logits_file)
    ok = err <= TOL
    print(f"{'ok  ' if ok else 'FAIL'} {os.path.basename(d)}: transformers vs kiln logits, "
          f"max rel error {err:.2e} (tolerance {TOL:g}); {type(cfg).__name__} "
          f"rope {rope_of(cfg)} tied {cfg.tie_word_embeddings}")
    return ok


# ---- mutations of an exported directory ---------------------------------------------------

def edit_config(d, fn):
    path = os.path.join(d, "config.json")
    cfg = json.load(open(path))
    fn(cfg)
    json.dump(cfg, open(path, "w"), indent=2)


def scale_theta(k):
    def fn(cfg):
        if "rope_theta" in cfg:
            cfg["rope_theta"] *= k
        for key in ("rope_parameters", "rope_scaling"):
            if isinstance(cfg.get(key), dict) and "rope_theta" in cfg[key]:
                cfg[key]["rope_theta"] *= k
    return lambda d: edit_config(d, fn)


def edit_tensors(d, fn):
    cfg = json.load(open(os.path.join(d, "config.json")))
    for f in glob.glob(os.path.join(d, "*.safetensors")):
        t = load_file(f)
        fn(t, cfg)
        save_file(t, f, metadata={"format": "pt"})


def rotary_interleaved(t, cfg):
    # The rows of each head from transformers' half-split order (x0..x_{d/2-1}, y0..) to the
    # interleaved one (x0, y0, x1, y1, ...) of Meta's checkpoints: what a missing permute does.
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    for name in list(t):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = t[name]
            heads = w.shape[0] // d
            t[name] = w.view(heads, 2, d // 2, -1).transpose(1, 2).reshape(w.shape).contiguous()


def swap_gate_up(t, cfg):
    for name in list(t):
        if name.endswith("mlp.gate_proj.weight"):
            up = name.replace("gate_proj", "up_proj")
            t[name], t[up] = t[up], t[name]


def ones(suffix):
    def fn(t, cfg):
        for name in list(t):
            if name.endswith(suffix):
                t[name] = torch.ones_like(t[name])
    return fn


MUTATIONS = {
    "rope_theta x100": scale_theta(100.0),
    "rope_theta /100": scale_theta(0.01),
    "q/k rotary layout interleaved": lambda d: edit_tensors(d, rotary_interleaved),
    "gate and up swapped": lambda d: edit_tensors(d, swap_gate_up),
    "final norm = 1": lambda d: edit_tensors(d, ones("model.norm.weight")),
    "input norms = 1": lambda d: edit_tensors(d, ones("input_layernorm.weight")),
}


def mutate(d, logits_file):
    caught = True
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for name, apply in MUTATIONS.items():
            m = os.path.join(tmp, name.replace(" ", "_").replace("/", "div"))
            shutil.copytree(d, m)
            apply(m)
            err = compare(m, logits_file)
            fails = err > TOL
            caught &= fails
            print(f"{'caught ' if fails else 'MISSED '} {os.path.basename(d)} with {name}: "
                  f"max rel error {err:.2e} {'>' if fails else '<='} {TOL:g}")
    return caught


# ---- Baichuan-7B from a Llama without GQA -------------------------------------------------

def fixture(out):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=160, max_position_embeddings=64,
                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    model.save_pretrained(out)


def baichuan(src, out):
    os.makedirs(out, exist_ok=True)
    cfg = json.load(open(os.path.join(src, "config.json")))
    assert cfg["num_key_value_heads"] == cfg["num_attention_heads"], "Baichuan has no GQA"
    t = load_file(os.path.join(src, "model.safetensors"))
    for name in [n for n in t if n.endswith("self_attn.q_proj.weight")]:
        p = name[: -len("q_proj.weight")]
        t[p + "W_pack.weight"] = torch.cat([t.pop(p + s + "_proj.weight") for s in "qkv"]).contiguous()
    save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    # Baichuan-7B's config.json keys (no rope_theta: 10000; model_max_length, not max_position_embeddings)
    bc = {"architectures": ["BaiChuanForCausalLM"], "model_type": "baichuan",
          "vocab_size": cfg["vocab_size"], "hidden_size": cfg["hidden_size"],
          "intermediate_size": cfg["intermediate_size"], "num_hidden_layers": cfg["num_hidden_layers"],
          "num_attention_heads": cfg["num_attention_heads"], "hidden_act": "silu",
          "model_max_length": cfg["max_position_embeddings"], "rms_norm_eps": cfg["rms_norm_eps"],
          "tie_word_embeddings": False, "torch_dtype": "float32"}
    json.dump(bc, open(os.path.join(out, "config.json"), "w"), indent=2)


def greedy(d, tok, prompt, n):
    import sentencepiece as spm
    from transformers import LlamaForCausalLM
    sp = spm.SentencePieceProcessor(model_file=tok)
    model = LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    prompt_ids = [sp.bos_id()] + sp.encode(prompt)
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if nxt == sp.eos_id():
                break
            ids.append(nxt)
    print(prompt + sp.decode(ids[len(prompt_ids):]))


def main(argv):
    torch.set_num_threads(1)
    cmd = argv[0]
    if cmd == "check":
        like = argv[argv.index("--like") + 1] if "--like" in argv else None
        return 0 if check(argv[1], argv[2], like) else 1
    if cmd == "mutate":
        return 0 if mutate(argv[1], argv[2]) else 1
    if cmd == "suite":
        ok = True
        for line in sys.stdin:
            if line.strip():
                d, logits, *like = line.split()
                ok &= check(d, logits, like[0] if like else None)
                ok &= mutate(d, logits)
        return 0 if ok else 1
    if cmd == "baichuan":
        baichuan(argv[1], argv[2])
        return 0
    if cmd == "fixture":
        fixture(argv[1])
        return 0
    if cmd == "greedy":
        greedy(argv[1], argv[2], argv[3], int(argv[4]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
