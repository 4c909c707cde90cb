#!/usr/bin/env bash
# One device call (lent H100): full-size correctness against PyTorch, then the benchmark runner on the
# OpenChat-3.5-shaped synthetic checkpoints. Run through ../shared/device's on-device.sh with .gl, .devbin and
# .devdata (the OpenChat tokenizer) carried. Writes logs and JSON under $OUT; prints a short summary last.
set -uo pipefail
FINAL=${OUT:-/tmp/out}
OUT=/tmp/wgptq-results
W=.devbin/wgptq
mkdir -p "$OUT" "$FINAL"
M=/tmp/oc4
STEPS=${STEPS:-all}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# 0. Sampling test vectors from transformers' own logits processors (the device image has transformers).
if [ -n "${HF_VECTORS:-}" ]; then
  python3 scripts/hf_sampling_vectors.py --out "$FINAL/hf_sampling.json" > "$OUT/hf_vectors.txt" 2>&1
  log "HF sampling vectors"; tail -2 "$OUT/hf_vectors.txt" | tee -a "$OUT/summary.txt"
fi
# GPU clocks, power and temperature every 500 ms while the benchmarks run (clocks are the card's own: untouched).
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,pstate,temperature.gpu --format=csv,noheader \
  -lms 500 > "$OUT/clocks.csv" 2>/dev/null &
SMI=$!
# 1. Write the 4-bit g128 act-order model and check it against PyTorch.
$W bench --synthetic openchat-3.5 --bits 4 --group-size 128 --act-order --save $M --tokenizer-from .devdata/openchat \
  --contexts 16,4096 --prompt-lens 512 --decode-tokens 64 --runs 3 --profile --json "$OUT/b4g128.json" \
  > "$OUT/b4g128.txt" 2>&1
log "4-bit g128 act-order (default tune)"; grep -E -A3 "^(decode|prefill|ceiling|dispatch|load) " "$OUT/b4g128.txt" | head -20 | tee -a "$OUT/summary.txt"
grep -E -A16 "^per-op profile, decode at ctx 16 " "$OUT/b4g128.txt" | cut -c1-90 | tee -a "$OUT/summary.txt"
grep -E -A22 "^per-op profile, prefill " "$OUT/b4g128.txt" | cut -c1-110 | tee -a "$OUT/summary.txt"
# compare MODEL SUFFIX: 8 greedy ids and top-5 logprobs of wgptq against scripts/torch_reference.py.
compare() {
  $W generate --model "$1" --prompt "The quick brown fox jumps over the lazy dog" --no-template -n 8 --json \
    --top-logprobs 5 > "$OUT/wgptq_gen$2.json" 2> "$OUT/wgptq_gen$2.err"
  IDS=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_ids"])))' "$OUT/wgptq_gen$2.json")
  python3 scripts/torch_reference.py "$1" --ids "$IDS" -n 8 --topk 5 --tol 2e-2 --out "$OUT/torch_ref$2.json" \
    --compare "$OUT/wgptq_gen$2.json" > "$OUT/compare$2.txt" 2>&1
}
if [ "$STEPS" = all ]; then
  compare $M ""
  log "PyTorch comparison"; tail -4 "$OUT/compare.txt" | tee -a "$OUT/summary.txt"
fi
# 1b. COMPARE8=1: the same PyTorch check on an 8-bit g128 act-order checkpoint (8-bit codes take other
#     kernel paths: the integer GEMV meets 8-bit codes as signed bytes).
if [ -n "${COMPARE8:-}" ]; then
  M8=/tmp/oc8
  $W bench --synthetic openchat-3.5 --bits 8 --group-size 128 --act-order --save $M8 --tokenizer-from .devdata/openchat \
    --contexts 16 --prompt-lens 64 --decode-tokens 16 --runs 1 > "$OUT/b8g128_save.txt" 2>&1
  compare $M8 8
  log "PyTorch comparison, 8-bit g128"; tail -4 "$OUT/compare8.txt" | tee -a "$OUT/summary.txt"
  rm -rf $M8
fi
# 2. Kernel variants at short context: each word of VARIANTS is VAR=VALUE[,VAR=VALUE...] for WGPTQ_ tuning
#    variables (GEMV=COLS4xKSPLIT, DECODE_<OP>=COLS4xKSPLIT/SPLITS, UNROLL=1|4|8, SPLITK_TARGET=N, SHORT_DECODE=0, FUSE_RESIDUAL=0, ABLATE=op+op,
#    GEMV_ABLATE=1|2, COOP=0, COOP_TM=64|128, COOP_WG=256|512, COOP_SCALED=0|2, COOP_SPLIT=0, PREFILL_SPLITS=n,
#    NO_GATHER=op+op, ATTN_G=1|2|4), CHUNK=n
#    (--prefill-chunk n), or BIN=name for another binary in .devbin.
for v in ${VARIANTS:-GEMV=16x16 GEMV=8x32 UNROLL=1 UNROLL=8 SPLITK_TARGET=256}; do
  # BIN=name runs .devbin/name (another build carried beside the main one) instead.
  envs=(); extra=(); VW=$W; IFS=',' read -ra kv <<< "$v"
  for x in "${kv[@]}"; do case $x in BIN=*) VW=.devbin/${x#BIN=} ;; CHUNK=*) extra+=(--prefill-chunk "${x#CHUNK=}") ;;
    *) envs+=("WGPTQ_$x") ;; esac; done
  env "${envs[@]}" $VW bench --model $M --contexts ${VAR_CONTEXTS:-16} --prompt-lens ${VAR_PROMPT:-64} --decode-tokens ${VAR_TOKENS:-64} --runs ${VAR_RUNS:-3} --profile "${extra[@]}" \
    > "$OUT/var_${v//[\/,]/_}.txt" 2>&1
  log "variant $v"; grep -E "^ *(16|4096|${VAR_PROMPT:-64}) " "$OUT/var_${v//[\/,]/_}.txt" | head -3 | tee -a "$OUT/summary.txt"
  # Per-op GPU times are steadier than tok/s (about 3% against 10% between runs): the GEMVs' lines.
  grep -E "^  (qkv|rope|o_proj|gate_up|down|attention) " "$OUT/var_${v//[\/,]/_}.txt" | cut -c1-80 | tee -a "$OUT/summary.txt"
done
if [ "${BRANCHES:-1}" = 1 ]; then
  IFS=';' read -ra BL <<< "${BRANCH_LIST:-4 32 --act-order;8 128 --act-order;8 -1 --act-order}"
  for v in "${BL[@]}"; do
    set -- $v
    $W bench --synthetic openchat-3.5 --bits $1 --group-size $2 ${3:-} --contexts 16 --prompt-lens 512 \
      --decode-tokens 64 --runs 3 --json "$OUT/br_$1g$2${3:-}.json" > "$OUT/br_$1g$2${3:-}.txt" 2>&1
    log "bits $1 group $2 ${3:-}"; grep -E -A1 "^(decode|prefill) " "$OUT/br_$1g$2${3:-}.txt" | head -8 | tee -a "$OUT/summary.txt"
  done
fi
kill $SMI 2>/dev/null
log "SM clock MHz under load (min / median / max of samples with power > 150 W)"
awk -F', ' '$4+0 > 150 {print $2+0}' "$OUT/clocks.csv" | sort -n | awk '{a[NR]=$1} END {if (NR) print a[1], a[int((NR+1)/2)], a[NR], "(" NR " samples)"}' | tee -a "$OUT/summary.txt"
rm -rf $M
# At most 8 files come back: one archive and the summary.
tar czf "$FINAL/results.tgz" -C "$OUT" . && cp "$OUT/summary.txt" "$FINAL/"
echo; cat "$OUT/summary.txt"
