#!/usr/bin/env bash
# One device call (lent H100): full-size correctness against PyTorch, then the benchmark runner on the
# OpenChat-3.5-shaped synthetic checkpoints. Run through ../shared/device's on-device.sh with .gl, .devbin and
# .devdata (the OpenChat tokenizer) carried. Writes logs and JSON under $OUT; prints a short summary last.
set -uo pipefail
OUT=${OUT:-/tmp/out}
W=.devbin/wgptq
mkdir -p "$OUT"
M=/tmp/oc4
STEPS=${STEPS:-all}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# 1. Write the 4-bit g128 act-order model and check it against PyTorch.
$W bench --synthetic openchat-3.5 --bits 4 --group-size 128 --act-order --save $M --tokenizer-from .devdata/openchat \
  --contexts 16,4096 --prompt-lens 512 --decode-tokens 64 --runs 3 --profile --json "$OUT/b4g128.json" \
  > "$OUT/b4g128.txt" 2>&1
log "4-bit g128 act-order (default tune)"; grep -E "decode|prefill|ceiling|load|encode" "$OUT/b4g128.txt" | head -20 | tee -a "$OUT/summary.txt"
if [ "$STEPS" = all ]; then
  $W generate --model $M --prompt "The quick brown fox jumps over the lazy dog" --no-template -n 8 --json --top-logprobs 5 \
    > "$OUT/wgptq_gen.json" 2> "$OUT/wgptq_gen.err"
  IDS=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' "$OUT/wgptq_gen.json")
  python3 scripts/torch_reference.py $M --ids "$IDS" -n 8 --topk 5 --tol 2e-2 --out "$OUT/torch_ref.json" \
    --compare "$OUT/wgptq_gen.json" > "$OUT/compare.txt" 2>&1
  log "PyTorch comparison"; tail -4 "$OUT/compare.txt" | tee -a "$OUT/summary.txt"
fi
# 2. GEMV workgroup shapes at short context.
for tune in ${TUNES:-16x16 8x32 8x128 4x128}; do
  WGPTQ_GEMV=$tune $W bench --model $M --contexts 16 --prompt-lens 64 --decode-tokens 64 --runs 3 > "$OUT/tune_$tune.txt" 2>&1
  log "tune $tune"; grep -E "^ *16 " "$OUT/tune_$tune.txt" | head -3 | tee -a "$OUT/summary.txt"
done
rm -rf $M
# 3. The other branches at short context.
if [ "$STEPS" = all ]; then
  for v in "4 32" "8 128" "8 -1"; do
    set -- $v
    $W bench --synthetic openchat-3.5 --bits $1 --group-size $2 --act-order --contexts 16 --prompt-lens 512 \
      --decode-tokens 64 --runs 3 --json "$OUT/b$1g$2.json" > "$OUT/b$1g$2.txt" 2>&1
    log "bits $1 group $2"; grep -E "decode|prefill" "$OUT/b$1g$2.txt" | head -8 | tee -a "$OUT/summary.txt"
  done
fi
echo; cat "$OUT/summary.txt"
