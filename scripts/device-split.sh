#!/usr/bin/env bash
# One device call (docs/PERF.md run 46): for 8- and 4-bit g128 act-order synthetic checkpoints, the PyTorch check
# (scripts/torch_reference.py) and, for 8-bit, the prefill speed under each WGPTQ_COOP_SPLIT choice of the tensor-core
# GEMM (1 both operands hi + lo, 0 none, 2 x only, 3 w only). Run through ../shared/device's on-device.sh with .gl,
# .devbin and .devdata carried; prints to stdout.
set -u
W=.devbin/wgptq
for b in 8 4; do
$W bench --synthetic openchat-3.5 --bits $b --group-size 128 --act-order --save /tmp/oc$b --tokenizer-from .devdata/openchat --contexts 16 --prompt-lens 64 --decode-tokens 8 --runs 1 > $OUT/save$b.txt 2>&1
for S in 1 0 2 3; do
  WGPTQ_COOP_SPLIT=$S $W generate --model /tmp/oc$b --prompt "The quick brown fox jumps over the lazy dog" --no-template -n 8 --json --top-logprobs 5 > /tmp/g$S.json 2>/dev/null
  IDS=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' /tmp/g$S.json)
  echo "== $b-bit split $S"; python3 scripts/torch_reference.py /tmp/oc$b --ids "$IDS" -n 8 --topk 5 --tol 2e-2 --compare /tmp/g$S.json 2>&1 | tail -3
  if [ $b = 8 ]; then WGPTQ_COOP_SPLIT=$S $W bench --model /tmp/oc$b --contexts 16 --prompt-lens 512 --decode-tokens 8 --runs 3 --profile 2>&1 | grep -E "^ +512 |gptq_gemm_coop" | cut -c1-60; fi
done
rm -rf /tmp/oc$b
done
