#!/usr/bin/env bash
# One prepared check of the course on a CUDA GPU machine: environment, every notebook top to bottom
# with the GPU setting, then the GPU benchmarks. Meant to fit ~9 minutes on one H100; every part
# has its own time budget (seconds, overridable through the variables below) and a part that
# overruns is stopped and reported, so that the parts after it still run.
#
#   bash bench/gpu_check.sh [WHEELS_DIR]     # on the GPU machine, from anywhere in the checkout
#   bash bench/gpu_check.sh --cpu-smoke      # (or DRY_RUN=1) here, on a CPU: proves the plumbing
#   bash bench/gpu_check.sh --download-wheels DIR   # here, with pip's registry: fetch WHEELS_DIR
#
# WHEELS_DIR: a folder of wheels for what the machine's image lacks (beartype, gensim,
#   smart_open, pooch, nbclient, nbformat, ipykernel and their own needs); they are installed
#   into /tmp/site with pip --no-index --no-deps and put on PYTHONPATH. Then the checkout is
#   installed with `pip install -e . --no-deps` (falling back to PYTHONPATH if that fails).
#   --download-wheels DIR fills DIR with those wheels (about 40 MB), at the versions installed
#   in the local Python, for CPython 3.12 on x86-64 Linux (the GPU image's Python).
# Environment:
#   OUT       where logs and JSON results go (default ./gpu_out). At most 8 files are written:
#             gpu_check.log (everything printed), summary.txt, notebooks.json, gpt_vs_hf.json,
#             generate_speed.json, gpu_setting.json.
#   PY        the Python to use (default python3; in --cpu-smoke, .venv/bin/python if present)
#   NANOGPT   a nanoGPT checkout for bench/gpu_setting.py (default ./.nanogpt if it has train.py)
#   PARTS     which parts to run, comma-separated (default env,notebooks,gpt_vs_hf,generate,gpu_setting)
#   NB_BUDGET_S=140 NB_MAX_S=120 GVH_BUDGET_S=150 GEN_BUDGET_S=45 SET_BUDGET_S=180
#             seconds for all notebooks, for one notebook, and for each benchmark. The notebooks
#             with a setting switch (chapters 7-9, where the GPU setting differs) run first, then
#             the others, then the solutions; those the budget does not reach are listed as not
#             run. For all of them, run once more with PARTS=notebooks NB_BUDGET_S=480.
#   NANOGPT_ITERS=2000  nanoGPT's max_iters (its best came at 1500 on an H200; the schedule is
#             that of the full 5000-iteration run, so the first 2000 iterations are the same)
# Data: the notebooks and benchmarks read Tiny Shakespeare and GPT-2's BPE files from data/ (or
# LLM_DATA_MIRROR); the machine has no internet, so they must travel with the checkout.
set -u -o pipefail
cd "$(dirname "$0")/.."

# What the GPU image lacks, with everything they need that it lacks too (read from each wheel's
# Requires-Dist against the image's package list).
WHEEL_PACKAGES="beartype gensim smart_open pooch platformdirs nbclient nbformat ipykernel jupyter_client jupyter_core
  traitlets fastjsonschema jsonschema jsonschema-specifications referencing rpds-py pyzmq tornado comm debugpy ipython
  ipython_pygments_lexers jedi parso matplotlib-inline nest-asyncio2 pexpect ptyprocess prompt_toolkit wcwidth
  stack_data executing asttokens pure_eval"

download_wheels() {
  local dir=$1 py=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  mkdir -p "$dir"
  local pins
  pins=$("$py" -c 'import sys, importlib.metadata as md; print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))' \
    $WHEEL_PACKAGES) || { echo "install the packages locally first (pip install -r requirements.txt)"; return 1; }
  # shellcheck disable=SC2086  # one argument per pin
  "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" $pins && du -sh "$dir"
}

DRY_RUN=${DRY_RUN:-0}
WHEELS=""
while [ $# -gt 0 ]; do
  arg=$1
  shift
  case "$arg" in
    --download-wheels) download_wheels "${1:?--download-wheels needs a folder}"; exit $? ;;
    --cpu-smoke) DRY_RUN=1 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) WHEELS=$arg ;;
  esac
done
if [ "$DRY_RUN" = 1 ] && [ -x .venv/bin/python ]; then PY=${PY:-.venv/bin/python}; else PY=${PY:-python3}; fi
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PARTS=${PARTS:-env,notebooks,gpt_vs_hf,generate,gpu_setting}
NB_BUDGET_S=${NB_BUDGET_S:-140}
NB_MAX_S=${NB_MAX_S:-120}
GVH_BUDGET_S=${GVH_BUDGET_S:-150}
GEN_BUDGET_S=${GEN_BUDGET_S:-$([ "$DRY_RUN" = 1 ] && echo 120 || echo 45)}  # a busy CPU needs longer
SET_BUDGET_S=${SET_BUDGET_S:-180}
NANOGPT_ITERS=${NANOGPT_ITERS:-2000}
if [ -z "${NANOGPT:-}" ] && [ -f .nanogpt/train.py ]; then NANOGPT=$PWD/.nanogpt; fi
NANOGPT=${NANOGPT:-}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1

wanted() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_part NAME BUDGET_S COMMAND...: run with a hard time limit (timeout kills the command's
# process group), note the exit status and seconds in summary.txt.
run_part() {
  local name=$1 budget=$2
  shift 2
  echo
  echo "=== $name (budget ${budget} s) $(date -u +%H:%M:%S) ==="
  echo "+ $*"
  local start=$SECONDS rc
  timeout --kill-after=10 "$budget" "$@"
  rc=$?
  local took=$((SECONDS - start))
  case $rc in
    0) verdict=ok ;;
    124|137) verdict="STOPPED at its budget" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  echo "=== $name: $verdict after ${took} s ==="
  printf '%-14s %-28s %5s s (budget %s s)\n' "$name" "$verdict" "$took" "$budget" >>"$OUT/summary.txt"
}

setup() {
  echo "=== setup $(date -u +%Y-%m-%dT%H:%M:%SZ), mode: $([ "$DRY_RUN" = 1 ] && echo 'CPU smoke (DRY_RUN)' || echo GPU) ==="
  if [ "$DRY_RUN" = 1 ]; then
    echo "CPU smoke: no wheels or pip install; using $PY as it is"
  else
    if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
      echo "installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into /tmp/site"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    elif [ -n "$WHEELS" ]; then
      echo "no wheels in $WHEELS: continuing with the image's packages"
    fi
    if ! "$PY" -m pip install -q --no-deps --no-build-isolation -e . ; then
      echo "pip install -e . failed: putting the checkout on PYTHONPATH instead"
      export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    fi
  fi
  if [ ! -f data/tinyshakespeare.txt ] && [ -z "${LLM_DATA_MIRROR:-}" ]; then
    echo "WARNING: no data/tinyshakespeare.txt and no LLM_DATA_MIRROR: without internet, notebooks and benchmarks"
    echo "         that read Tiny Shakespeare or GPT-2's BPE files will fail (carry data/ with the checkout)"
  fi
  : >"$OUT/summary.txt"
}

main() {
  setup
  if wanted env; then
    timeout 30 nvidia-smi || echo "(no nvidia-smi here)"
    run_part env 60 "$PY" bench/common.py environment
  fi

  if wanted notebooks; then
    if [ "$DRY_RUN" = 1 ]; then
      notebooks=(${DRY_RUN_NOTEBOOK:-notebooks/04_causal_attention.ipynb})
      export BUILD_A_GPT_SMOKE=1
    else
      mapfile -t notebooks < <(grep -l 'pick_setting(' notebooks/[0-9]*.ipynb; grep -L 'pick_setting(' \
        notebooks/[0-9]*.ipynb; ls notebooks/solutions/*.ipynb 2>/dev/null)
    fi
    # the notebook helper stops itself at the budget; timeout is the backstop
    export BUILD_A_GPT_SETTING=gpu
    run_part notebooks $((NB_BUDGET_S + 30)) "$PY" bench/common.py notebooks \
      --budget-s "$NB_BUDGET_S" --max-notebook-s "$NB_MAX_S" --json "$OUT/notebooks.json" "${notebooks[@]}"
    unset BUILD_A_GPT_SMOKE BUILD_A_GPT_SETTING
  fi

  if [ "$DRY_RUN" = 1 ]; then  # tiny shapes on the CPU: each script runs end to end, nothing is measured
    gvh=(--device cpu --rounds 1 --steps-per-round 1 --warmup-rounds 1 --batch 2 --seq 32 --layers 1)
    gen=(--device cpu --new-tokens 4 --rounds 1 --layers 1)
    gset=(--smoke --device cpu --budget-s $((SET_BUDGET_S - 15)))
  else
    gvh=(--device cuda --compile --rounds 5)
    gen=(--device cuda)
    gset=(--device cuda --budget-s $((SET_BUDGET_S - 15)) --nanogpt-iters "$NANOGPT_ITERS")
  fi
  [ -n "$NANOGPT" ] && gset+=(--nanogpt "$NANOGPT")
  wanted gpt_vs_hf && run_part gpt_vs_hf "$GVH_BUDGET_S" "$PY" bench/gpt_vs_hf.py "${gvh[@]}" --json "$OUT/gpt_vs_hf.json"
  wanted generate && run_part generate "$GEN_BUDGET_S" "$PY" bench/generate_speed.py "${gen[@]}" \
    --json "$OUT/generate_speed.json"
  wanted gpu_setting && run_part gpu_setting "$SET_BUDGET_S" "$PY" bench/gpu_setting.py "${gset[@]}" \
    --json "$OUT/gpu_setting.json"
  [ -z "$NANOGPT" ] && wanted gpu_setting && echo "(no nanoGPT checkout: set NANOGPT or put one in ./.nanogpt)"

  echo
  echo "=== summary ($SECONDS s in all) ==="
  cat "$OUT/summary.txt"
  echo "results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
  ! grep -q "FAILED\|STOPPED" "$OUT/summary.txt"  # the exit status: 0 when every part ran to its end
}

main 2>&1 | tee "$OUT/gpu_check.log"
