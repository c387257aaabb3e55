#!/usr/bin/env bash
# The Flickr8k LiT recipe in one command (docs/flickr8k.md):
#   records -> stage-1 training on cached locked-tower features -> dev retrieval + CIFAR-10
#   zero-shot evaluation -> runs/flickr8k/REPORT.md
#
#   scripts/flickr8k.sh                 # or: make flickr8k
#   DATASET=coco_mini scripts/flickr8k.sh   # the same recipe on ../shared/data/coco_mini
#   DATASET=coco COCO_DIR=/data/coco OUT=runs/coco scripts/flickr8k.sh   # full MS-COCO 2017
#
# Idempotent: records are built only when their manifest is missing; tower features are
# cached once under $OUT/features and shared by every run; a finished training run is not
# retrained (train.py resumes a workdir); an existing evaluation report is kept.
# Env: PY (python, default .venv/bin/python), SHARED (../shared), OUT (runs/<dataset>),
#      COCO_DIR (DATASET=coco: an MS-COCO 2017 root in the official layout),
#      CONFIG (configs/flickr8k_lit.json), RUN (workdir name, default recipe),
#      SEEDS (default "0 1 2": one head per seed on the same cached features, $RUN for the
#      first and ${RUN}_seedN for the others, evaluated as one ensemble; "0" = a single model),
#      XRES_SIZES (default "224": more heads per size (XRES_SEEDS) on the same locked
#      towers at that image size, added to the ensemble: a cross-resolution ensemble;
#      "" = none),
#      XRES_SEEDS (default "0 1 2": one cross-resolution head per seed, ${RUN}_px224_lr32
#      for the first and ${RUN}_px224_lr32_seedN for the others),
#      XRES_LOWRES (default 32: each cross-resolution member also trains on a second cached
#      view, the image shrunk to N px and enlarged back, as CIFAR-10's 32 px images are at
#      evaluation: --set data.cached_views=2 data.lowres_size=N, workdir ${RUN}_px224_lrN;
#      0 = the plain member ${RUN}_px224, one view),
#      BANK (default 1: dev retrieval ranks by CSLS against the train records, the report
#      keeps the cosine numbers too; 0 = plain cosine),
#      SKIP_ZEROSHOT=1, SKIP_EVAL=1 (use the training's dev numbers only), EXTRA_SET
#      ("section.key=value ..." overrides, with RUN naming a new workdir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
SHARED="${SHARED:-../shared}"
DATASET="${DATASET:-flickr8k}"
export KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2 HF_HUB_OFFLINE=1
export OMP_WAIT_POLICY=PASSIVE   # idle OpenMP threads sleep: the 2 cores are shared

if [ "$DATASET" = flickr8k ]; then
  OUT="${OUT:-runs/flickr8k}"
  CONFIG="${CONFIG:-configs/flickr8k_lit.json}"
elif [ "$DATASET" = coco_mini ] || [ "$DATASET" = coco ]; then
  OUT="${OUT:-runs/$DATASET}"
  CONFIG="${CONFIG:-configs/coco_mini_lit.json}"
else
  echo "error: DATASET=$DATASET: expected flickr8k, coco_mini or coco (with COCO_DIR)" >&2
  exit 2
fi
RUN="${RUN:-recipe}"
REC="$OUT/records"
mkdir -p "$OUT" "$REC" "$OUT/eval"
T_START=$(date +%s)
stamp() { echo "[$(date +%H:%M:%S)] +$(( $(date +%s) - T_START ))s  $*"; }
TIMES="$OUT/times.tsv"
timed() {  # timed LABEL cmd...   (appends "label<TAB>seconds" to $TIMES)
  local label="$1"; shift
  local t0; t0=$(date +%s)
  stamp "start  $label"
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\n' "$(date -Iseconds)" "$label" "$dt" >> "$TIMES"
  stamp "done   $label (${dt}s)"
}

# ---------------------------------------------------------------- 1. records
build_records() {  # build_records OUT_DIR args...
  local out="$1"; shift
  if [ -f "$out/manifest.json" ]; then
    stamp "records $out exist (kept)"
  else
    timed "records $(basename "$out")" "$PY" -m records build "$@" --out "$out"
  fi
}
if [ "$DATASET" = flickr8k ]; then
  F8K="$SHARED/data/flickr8k"
  build_records "$REC/train" flickr "$F8K" --split-file "$F8K/splits/Flickr_8k.trainImages.txt"
  build_records "$REC/dev" flickr "$F8K" --split-file "$F8K/splits/Flickr_8k.devImages.txt"
else
  COCO="${COCO_DIR:-$SHARED/data/coco_mini}"   # official layout: annotations/, train2017/, val2017/
  build_records "$REC/train" coco "$COCO" --split train2017
  build_records "$REC/dev" coco "$COCO" --split val2017
fi

# ---------------------------------------------------------------- 2. training
# Locked towers: train.py caches the tower features of the train and dev records once under
# $OUT/features (shared by every run), then trains the heads only.
train_head() {  # train_head NAME SECTION.KEY=VALUE...   (appends the workdir to MEMBERS)
  local name="$1"; shift
  local sets=(--set "run.features_dir=$OUT/features")
  for kv in "$@" ${EXTRA_SET:-}; do sets+=(--set "$kv"); done
  timed "train $name" "$PY" train.py --records "$REC/train" --val-records "$REC/dev" \
    --workdir "$OUT/$name" --config "$CONFIG" "${sets[@]}"
  MEMBERS+=("$OUT/$name")
}
SEEDS="${SEEDS:-0 1 2}"
MEMBERS=()
for seed in $SEEDS; do
  name="$RUN"; [ ${#MEMBERS[@]} -gt 0 ] && name="${RUN}_seed$seed"
  train_head "$name" "run.seed=$seed"
done
XTAG=""
XRES_LOWRES="${XRES_LOWRES:-32}"
XRES_SEEDS="${XRES_SEEDS:-0 1 2}"
for size in ${XRES_SIZES-224}; do  # cross-resolution members: the same towers at another size
  xsets=("model.image_size=$size"); xname="${RUN}_px$size"
  if [ "$XRES_LOWRES" != 0 ]; then
    xsets+=("data.cached_views=2" "data.lowres_size=$XRES_LOWRES"); xname="${xname}_lr$XRES_LOWRES"
  fi
  first=1
  for seed in $XRES_SEEDS; do  # one head per seed, like the main members
    name="$xname"; [ $first = 1 ] || name="${xname}_seed$seed"; first=0
    train_head "$name" "run.seed=$seed" "${xsets[@]}"
  done
  XTAG="${XTAG}${xname#"$RUN"}"
done
if [ ${#MEMBERS[@]} -eq 1 ]; then
  MODEL="${MEMBERS[0]}"; EVAL="$RUN"
else  # the mean-cosine ensemble of the heads (the locked towers run once per image size)
  MODEL="ensemble:$(IFS=,; echo "${MEMBERS[*]}")"; EVAL="${RUN}_ens${#MEMBERS[@]}$XTAG"
fi
BANK_ARGS=(); DEV_EVAL="${EVAL}_dev"
if [ "${BANK:-1}" = 1 ]; then  # CSLS against the training records (never the dev set)
  BANK_ARGS=(--bank "$REC/train"); DEV_EVAL="${EVAL}_dev_csls"
fi

# ---------------------------------------------------------------- 3. evaluation
if [ "${SKIP_EVAL:-0}" != 1 ] && [ ! -f "$OUT/eval/$DEV_EVAL/report.json" ]; then
  timed "eval retrieval $DEV_EVAL" "$PY" evaluate.py retrieval --model "$MODEL" \
    --data "records:$REC/dev" "${BANK_ARGS[@]}" --out "$OUT/eval/$DEV_EVAL" \
    --cache-dir "$OUT/eval_cache" --quiet
fi
if [ "${SKIP_ZEROSHOT:-0}" != 1 ] && [ "$DATASET" = flickr8k ] \
   && [ ! -f "$OUT/eval/${EVAL}_cifar10/report.json" ]; then
  timed "eval zeroshot $EVAL" "$PY" evaluate.py zeroshot --model "$MODEL" \
    --data "$SHARED/data/cifar10_dev" --templates clip80 --out "$OUT/eval/${EVAL}_cifar10" \
    --cache-dir "$OUT/eval_cache" --quiet
fi

# ---------------------------------------------------------------- 4. report
"$PY" - "$OUT" "$EVAL" "$(( $(date +%s) - T_START ))" "$RUN" "$DEV_EVAL" <<'PYEOF'
import glob, json, os, sys
from records.machine import cpu_model
out, main_run, wall, first_run, dev_eval = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                             sys.argv[4], sys.argv[5])
def load(p):
    try:
        with open(p) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
rows = []
for summ in sorted(glob.glob(os.path.join(out, "*", "summary.json"))):
    wd = os.path.dirname(summ); name = os.path.basename(wd)
    s, cfg = load(summ), load(os.path.join(wd, "config.json")) or {}
    b = (s or {}).get("best") or {}
    hist = (s or {}).get("history") or []
    temp = next((r.get("train_temperature") for r in hist if r.get("epoch") == b.get("epoch")), None)
    m, d, o = cfg.get("model", {}), cfg.get("data", {}), cfg.get("optim", {})
    rows.append((name, b, temp, m, d, o, cfg.get("run", {}).get("seed")))
L = ["# Flickr8k LiT recipe — report", "",
     f"Written by scripts/flickr8k.sh (this invocation: {wall} s wall on {os.cpu_count()} "
     f"cores of {cpu_model()}; all stage times in "
     f"{out}/times.tsv). Dev split only (1,000 images, 5,000 captions); the test split is "
     "never used. Numbers are the best epoch selected on dev val_rsum.", "",
     "| run | head | loss | px | views | batch | lr | wd | seed | best epoch | temp | i2t R@1 | R@5 "
     "| R@10 | t2i R@1 | R@5 | R@10 | rsum |",
     "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for name, b, temp, m, d, o, seed in rows:
    if not b:
        continue
    loss = m.get("loss", "") + (f"+{m['extra_loss']}×{m.get('extra_loss_weight')}"
                                if m.get("extra_loss") else "")
    L.append(f"| {name} | {m.get('head')} | {loss} | {m.get('image_size')} | "
             f"{d.get('cached_views', 1)}{' (low-res ' + str(d['lowres_size']) + ' px)' if d.get('lowres_size') else ''} | {d.get('batch_size')} | {o.get('lr')} | {o.get('weight_decay')} | {seed} | "
             f"{b.get('epoch')} | {temp if temp is None else round(temp, 4)} | "
             + " | ".join(f"{b.get(f'val_{k}', float('nan')):.1f}" for k in
                          ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"))
             + f" | {b.get('val_rsum', float('nan')):.1f} |")
L += ["", f"## Evaluation of `{main_run}` (evaluate.py)", ""]
ret = load(os.path.join(out, "eval", dev_eval, "report.json"))
if ret:
    tables = [("", ret["metrics"])]
    if "metrics_cosine" in ret:
        tables = [(" (CSLS against the train records, k="
                   f"{ret['settings']['bank']['k']})", ret["metrics"]),
                  (" (plain cosine)", ret["metrics_cosine"])]
    for how, mt in tables:
        for k, lab in (("image_to_text", "image→text"), ("text_to_image", "text→image")):
            L.append(f"- dev {lab}{how}: " + ", ".join(f"{r} {100 * mt[k][r]:.1f}"
                                                       for r in ("R@1", "R@5", "R@10")))
    L.append(f"- retrieval grid (text queries → top-5 dev images): "
             f"eval/{dev_eval}/retrieval_examples.png")
else:
    L.append("- dev retrieval: not run (SKIP_EVAL=1 or not finished)")
zs = load(os.path.join(out, "eval", f"{main_run}_cifar10", "report.json"))
if zs:
    zm = zs.get("metrics", {})
    L.append(f"- zero-shot CIFAR-10 dev (1,000 images, 32 px upsampled bicubic, clip80 "
             f"templates): top-1 {100 * zm.get('accuracy', float('nan')):.1f}%, top-5 "
             f"{100 * zm.get('top5_accuracy', float('nan')):.1f}%")
else:
    L.append("- zero-shot CIFAR-10: not run")
L += ["", f"Training curves: {first_run}/curves.png (loss, temperature, in-batch accuracy, "
      "dev Recall@K per epoch)."]
times = os.path.join(out, "times.tsv")
if os.path.exists(times):
    L += ["", "## Stage times (s, every invocation appends; cached stages take ~0 s)", "", "```",
          open(times).read().rstrip(), "```"]
with open(os.path.join(out, "REPORT.md"), "w") as fh:
    fh.write("\n".join(L) + "\n")
print("\n".join(L))
PYEOF
stamp "wrote $OUT/REPORT.md (total $(( $(date +%s) - T_START ))s)"
