#!/usr/bin/env python3
"""PyTorch reference for a GPTQ (v1 or v2) Mistral/Llama checkpoint directory, independent of wgptq.

Dequantizes every GPTQ linear from the packed tensors (W = scale[g_idx] * (q - z), z = stored + 1 for v1), runs the
HF Mistral/Llama math from scratch in float32 (full recompute each step, sliding window i - W < j <= i), greedy
decodes, and writes prompt ids, greedy ids and the top-k log-softmax of the raw logits per step as JSON.
With --compare FILE (the output of `wgptq generate --json --top-logprobs K --no-template`), checks that the ids are
equal and each top-k logprob is within --tol, and exits non-zero otherwise.

Usage: torch_reference.py MODEL_DIR --ids 1,2,3 [-n 8] [--topk 5] [--out ref.json] [--compare wgptq.json]
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors import safe_open


def load(model_dir, device):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    q = cfg.get("quantization_config")
    if q is None and os.path.exists(os.path.join(model_dir, "quantize_config.json")):
        q = json.load(open(os.path.join(model_dir, "quantize_config.json")))
    tensors = {}
    files = [f for f in os.listdir(model_dir) if f.endswith(".safetensors")]
    for f in files:
        with safe_open(os.path.join(model_dir, f), framework="pt", device="cpu") as st:
            for k in st.keys():
                tensors[k] = st.get_tensor(k)
    return cfg, q, tensors


def unpack(words, bits, dim):
    """Unpacks int32 words along `dim` (0: rows, 1: columns) into codes, LSB first."""
    pf = 32 // bits
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(0, 32, bits, device=w.device)
    if dim == 0:
        codes = (w.unsqueeze(1) >> shifts.view(1, pf, 1)) & ((1 << bits) - 1)
        return codes.reshape(w.shape[0] * pf, w.shape[1])
    codes = (w.unsqueeze(2) >> shifts.view(1, 1, pf)) & ((1 << bits) - 1)
    return codes.reshape(w.shape[0], w.shape[1] * pf)


def dense(t, prefix, q, device):
    if prefix + ".weight" in t:
        return t[prefix + ".weight"].to(device, torch.float32)
    bits = q["bits"]
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    qw = unpack(t[prefix + ".qweight"].to(device), bits, 0)  # [K, N]
    qz = unpack(t[prefix + ".qzeros"].to(device), bits, 1)  # [G, N]
    if fmt != "gptq_v2":
        qz = qz + 1
    sc = t[prefix + ".scales"].to(device, torch.float32)  # [G, N]
    k = qw.shape[0]
    gs = q["group_size"] if q["group_size"] != -1 else k
    g = t.get(prefix + ".g_idx")
    g = g.to(device).long() if g is not None else torch.arange(k, device=device) // gs
    w = sc[g] * (qw.float() - qz[g].float())  # [K, N]
    return w.t().contiguous()  # [N, K]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ids", required=True)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--out")
    ap.add_argument("--compare")
    ap.add_argument("--tol", type=float, default=2e-2)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, q, t = load(a.model, dev)
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    W = cfg.get("sliding_window")
    L = cfg["num_hidden_layers"]
    emb = t["model.embed_tokens.weight"].to(dev, torch.float32)
    lm = t["lm_head.weight"].to(dev, torch.float32) if "lm_head.weight" in t else emb
    layers = []
    for i in range(L):
        p = f"model.layers.{i}."
        layers.append({n: dense(t, p + s, q, dev) for n, s in [
            ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
            ("o", "self_attn.o_proj"), ("gate", "mlp.gate_proj"), ("up", "mlp.up_proj"),
            ("down", "mlp.down_proj")]})
        layers[-1]["n1"] = t[p + "input_layernorm.weight"].to(dev, torch.float32)
        layers[-1]["n2"] = t[p + "post_attention_layernorm.weight"].to(dev, torch.float32)
    norm = t["model.norm.weight"].to(dev, torch.float32)
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=dev).float() / hd))

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rot(x, pos):
        f = pos.float()[:, None] * inv[None, :]
        e = torch.cat([f, f], -1)
        c, s = e.cos()[:, None, :], e.sin()[:, None, :]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * c + torch.cat([-x2, x1], -1) * s

    def forward(ids):
        T = len(ids)
        pos = torch.arange(T, device=dev)
        x = emb[torch.tensor(ids, device=dev)]
        i, j = pos[:, None], pos[None, :]
        mask = j <= i
        if W:
            mask &= j > i - W
        for ly in layers:
            h = rms(x, ly["n1"])
            qq = rot((h @ ly["q"].t()).view(T, nh, hd), pos)
            kk = rot((h @ ly["k"].t()).view(T, nkv, hd), pos)
            vv = (h @ ly["v"].t()).view(T, nkv, hd)
            rep = nh // nkv
            kk = kk.repeat_interleave(rep, 1)
            vv = vv.repeat_interleave(rep, 1)
            s = torch.einsum("thd,shd->hts", qq, kk) / math.sqrt(hd)
            s = s.masked_fill(~mask[None], float("-inf")).softmax(-1)
            o = torch.einsum("hts,shd->thd", s, vv).reshape(T, nh * hd)
            x = x + o @ ly["o"].t()
            h = rms(x, ly["n2"])
            x = x + (torch.nn.functional.silu(h @ ly["gate"].t()) * (h @ ly["up"].t())) @ ly["down"].t()
        return rms(x[-1], norm) @ lm.t()

    ids = [int(v) for v in a.ids.split(",")]
    seq = list(ids)
    out = {"prompt_ids": ids, "greedy_ids": [], "top_logprobs": [], "margins": []}
    with torch.no_grad():
        for _ in range(a.n):
            logits = forward(seq)
            lp = logits.log_softmax(-1)
            top = torch.topk(logits, a.topk)
            out["top_logprobs"].append([{"id": int(i), "logprob": float(lp[i])} for i in top.indices])
            out["margins"].append(float(top.values[0] - top.values[1]))
            nxt = int(top.indices[0])
            out["greedy_ids"].append(nxt)
            seq.append(nxt)
    if a.out:
        json.dump(out, open(a.out, "w"))
    print(json.dumps({"greedy_ids": out["greedy_ids"], "margins": out["margins"]}))
    if a.compare:
        got = json.load(open(a.compare))
        ok = True
        worst = 0.0
        if got["prompt_ids"] != ids:
            print("prompt ids differ", got["prompt_ids"], ids)
            ok = False
        for s, (g, w) in enumerate(zip(got["generated_ids"], out["greedy_ids"])):
            if g != w:
                print(f"step {s}: wgptq {g}, reference {w} (reference margin {out['margins'][s]:.4f})")
                ok = False
                break
            gl = {e["id"]: e["logprob"] for e in got["top_logprobs"][s]}
            # The k-th entries may swap places with the (k+1)-th under float reordering; at most one may be absent.
            missing = [e["id"] for e in out["top_logprobs"][s] if e["id"] not in gl]
            if len(missing) > 1:
                print(f"step {s}: reference top tokens {missing} are not in wgptq's top list")
                ok = False
            for e in out["top_logprobs"][s]:
                if e["id"] in gl:
                    worst = max(worst, abs(gl[e["id"]] - e["logprob"]))
                if e["id"] in gl and not abs(gl[e["id"]] - e["logprob"]) <= a.tol:
                    print(f"step {s}: token {e['id']} logprob differs by {abs(gl[e['id']] - e['logprob']):.4f}")
                    ok = False
        print(f"largest top-k logprob difference over the matching steps: {worst:.4f}")
        print("COMPARE", "OK" if ok else "FAILED", f"(tol {a.tol})")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
