#!/usr/bin/env python3
"""Test vectors for wgptq's sampling processors, made by transformers' own logits processors.

Writes tests/fixtures/hf_sampling.json: for random logits (some with ties), the output of
RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper applied alone, and
of the chain in the order generate() builds it (repetition penalty, then temperature, top-k, top-p). Filtered
entries (-inf) are written as null. tests/sampling_hf.rs compares wgptq::sampling with them.

Usage: python3 scripts/hf_sampling_vectors.py [--out tests/fixtures/hf_sampling.json]
(needs torch and transformers; no GPU, no network).
"""
import argparse
import json
import math

import torch
import transformers
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def as_list(t):
    return [None if math.isinf(v) and v < 0 else float(v) for v in t.reshape(-1).tolist()]


def apply(proc, ids, logits):
    return proc(ids.clone(), logits.clone())


def tie_order_matters(proc, ids, logits):
    """Whether proc keeps some and drops others of equal logits: then its answer depends on the order torch.sort
    (not stable) leaves ties in, which no reimplementation can be held to."""
    out = apply(proc, ids, logits)[0]
    src = logits[0]
    for v in torch.unique(src[torch.isfinite(src)]):
        dropped = torch.isinf(out[src == v])
        if dropped.any() and not dropped.all():
            return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/hf_sampling.json")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(1234)
    cases = []
    params = [
        # (vocab, penalty, temperature, top_k, top_p, ties)
        (64, 1.3, 0.7, 10, 0.9, False),
        (64, 1.0, 1.0, 5, 0.5, True),
        (50, 1.1, 1.5, 1, 0.95, False),
        (50, 2.0, 0.3, 20, 0.3, True),
        (100, 1.18, 0.8, 40, 0.8, False),
        (33, 0.8, 1.0, 3, 0.99, True),
        (80, 1.05, 2.0, 0, 0.6, False),
        (80, 1.5, 0.5, 64, 0.05, False),
    ]
    for i, (vocab, penalty, temp, top_k, top_p, ties) in enumerate(params):
        logits = torch.randn(1, vocab, generator=g) * 3.0
        if ties:
            # Quantize so that several logits (also around the k-th largest) are exactly equal.
            logits = torch.round(logits * 2.0) / 2.0
        hist_len = int(torch.randint(0, 12, (1,), generator=g))
        history = torch.randint(0, vocab, (1, hist_len), generator=g)
        if hist_len:
            history[0, 0] = history[0, -1]  # a repeated token counts once
        chain = logits.clone()
        chain = apply(RepetitionPenaltyLogitsProcessor(penalty), history, chain) if penalty != 1.0 else chain
        chain = apply(TemperatureLogitsWarper(temp), history, chain) if temp != 1.0 else chain
        chain = apply(TopKLogitsWarper(top_k), history, chain) if top_k > 0 else chain
        # Where tied logits straddle the top-p cut, transformers' answer depends on torch's unstable sort: move p
        # until neither the lone top-p nor the chain's depends on the order of ties.
        while tie_order_matters(TopPLogitsWarper(top_p), history, logits) or tie_order_matters(
            TopPLogitsWarper(top_p), history, chain
        ):
            top_p = round(top_p + 0.01, 4)
            assert top_p < 1.0, f"case{i}: no tie-free top_p"
        chain = apply(TopPLogitsWarper(top_p), history, chain) if top_p < 1.0 else chain
        expected = {
            "repetition_penalty": as_list(apply(RepetitionPenaltyLogitsProcessor(penalty), history, logits)),
            "temperature": as_list(apply(TemperatureLogitsWarper(temp), history, logits)),
            "top_p": as_list(apply(TopPLogitsWarper(top_p), history, logits)),
            "chain": as_list(chain),
        }
        if top_k > 0:
            expected["top_k"] = as_list(apply(TopKLogitsWarper(top_k), history, logits))
        cases.append(
            {
                "name": f"case{i}",
                "logits": as_list(logits),
                "history": history.reshape(-1).tolist(),
                "penalty": penalty,
                "temperature": temp,
                "top_k": top_k,
                "top_p": top_p,
                "expected": expected,
            }
        )
    out = {
        "made_by": "scripts/hf_sampling_vectors.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cases": cases,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {len(cases)} cases to {args.out} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
