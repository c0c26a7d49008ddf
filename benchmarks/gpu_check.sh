#!/usr/bin/env bash
# The GPU check (issue 23): on a machine with one CUDA GPU, Python 3.12, torch, numpy 2 and pandas but no
# RecBole and no network, in at most 8 minutes (GPU_CHECK_SECONDS, default 470, caps every step):
#   1. installs RecBole 1.2.1 and its missing pure-Python dependencies from the wheels in .whl/ into
#      $GPU_CHECK_SITE (default /tmp/site), and pandas 2.3.3 from .whl/pandas/ when the machine's pandas is 3;
#   2. logs the versions and the GPU;
#   3. trains BC (HSTU with the reward head, as a post-training run's BC stage) and then every
#      post-training method from that checkpoint for 2 epochs on ml-1m-half, bf16 autocast on the GPU;
#   4. runs the fast tests with RECBOLE_ALIGN_TEST_DEVICE=cuda in the time left (up to 240 s; OUTPUT_DIR/tests.log);
#   4b. then, in the time left, benchmarks/scaling.py on the GPU (issue 34): one whole epoch of each of
#      GPU_CHECK_SCALING_METHODS (default BC, Exp-RSFT, PPO) at each of GPU_CHECK_SCALING_SIZES (default 10k and 700k
#      items at 1M ratings; "[696k:11.7M:811k:50]" with GPU_CHECK_SCALING_CONFIG=properties/amazon-books.yaml and
#      GPU_CHECK_SCALING_MIN_ITEM_RATINGS=5 is Amazon-Books-shaped after its filter, with its model), into
#      OUTPUT_DIR/scaling/ (scaling.json
#      is written after each size, so a size that finished survives the deadline);
#   5. with GPU_CHECK_PROTOCOL_SEEDS (e.g. "[2020,2021,2022]"): the paper's protocol on ml-1m-half by the benchmark
#      harness (BC 40 epochs, then ContinuedBC, Exp-RSFT, the three RSFT rows, DRPO, PPO, DPO and GRPO for 30 epochs,
#      fp32), GPU_CHECK_JOBS (10) runs at a time, beside steps 3-4, until 30 s before the deadline; its finished runs
#      (JSON, per-case results, logs, the BC checkpoints) go to OUTPUT_DIR/protocol.tar.gz. Its data folder is
#      /work/shared/data and its output folder GPU_CHECK_PROTOCOL_DIR, the paths of the CPU runs, so that the
#      run hashes match and the harness reuses these runs there (results/ unpacked into that folder);
# and writes OUTPUT_DIR/log, each run's results JSON (OUTPUT_DIR/<run>.json) and OUTPUT_DIR/gpu_check.json
# (each step's status and seconds; each run's device, filtered test NDCG@10, s/epoch, peak GPU memory).
#
# Both folders it reads are git-ignored and must be carried with the checkout (26 MB together):
#   .gpu_data/ml-1m-half: mkdir -p .gpu_data && cp -r ../shared/data/ml-1m-half .gpu_data/
#   .whl: RecBole and what the image lacks of the part of it that runs here (not thop, ray, plotly, hyperopt):
#     get() { python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any "$@"; }
#     get -d .whl recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2 && get -d .whl/pandas pandas==2.3.3 pytz tzdata
# Run from the repository root:  bash benchmarks/gpu_check.sh OUTPUT_DIR
# A dry run on a CPU: GPU_CHECK_DEVICE=cpu (runs get --gpu_id=''), PYTHON=<interpreter>, GPU_CHECK_DATA_PATH=<a
# folder holding a smaller ml-1m-half/>, GPU_CHECK_EPOCHS=1.
set -uo pipefail

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTPUT_DIR}
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
DATA_PATH=${GPU_CHECK_DATA_PATH:-.gpu_data}
EPOCHS=${GPU_CHECK_EPOCHS:-2}
SITE=${GPU_CHECK_SITE:-/tmp/site}
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-470}))
METHODS=(ContinuedBC ExpRSFT RSFT DRPO PPO GRPO DPO)
PROTOCOL_SEEDS=${GPU_CHECK_PROTOCOL_SEEDS:-}
PROTOCOL_DIR=${GPU_CHECK_PROTOCOL_DIR:-/work/main/benchmarks/results/protocol-gpu-ml-1m-half}
PROTOCOL_EPOCHS=${GPU_CHECK_PROTOCOL_EPOCHS:-"--bc_epochs=40 --epochs=30"}
PROTOCOL_DATA=${GPU_CHECK_PROTOCOL_DATA:-/work/shared/data}
TESTS=(tests/test_hstu.py tests/test_precision.py tests/test_data_and_evaluation.py tests/test_rlhf.py
       tests/test_reward_weighted.py tests/test_distributed.py tests/test_backbone.py tests/test_recommend.py)

mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log STEPS=$OUT/steps.tsv SAVED=$(mktemp -d)
: > "$LOG" && : > "$STEPS"
export PYTHONPATH=$SITE:$PWD PYTHONWARNINGS=ignore
# RecBole's Config sets CUDA_VISIBLE_DEVICES to gpu_id: give it the GPU that this machine's scheduler chose
if [[ $DEVICE == cuda ]]; then GPU_ID=${CUDA_VISIBLE_DEVICES:-0}; else GPU_ID=; fi

# step NAME CAP COMMAND...: COMMAND under a timeout of CAP seconds or the time left, its output into the log,
# a line "name status exit seconds" into steps.tsv; returns COMMAND's exit status
step() {
    local name=$1 cap=$2 start=$SECONDS rc status
    shift 2
    declare -F "$1" > /dev/null && set -- bash -c '"$@"' "$1" "$@"  # a function of this script (exported below)
    (( cap > DEADLINE - SECONDS )) && cap=$((DEADLINE - SECONDS))
    if (( cap < 10 )); then
        printf '%s\tskipped (time)\t\t0\n' "$name" >> "$STEPS" && echo "== $name: skipped, out of time" >> "$LOG"
        return 1
    fi
    echo "== $name (timeout ${cap}s): $*" >> "$LOG"
    timeout "$cap" "$@" >> "$LOG" 2>&1
    rc=$?
    case $rc in 0) status=ok ;; 124) status=timeout ;; *) status=failed ;; esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" >> "$STEPS"
    echo "== $name: $status (exit $rc) in $((SECONDS - start)) s" >> "$LOG"
    return $rc
}

# wheels into $SITE with pip, or unpacked as they are where the machine has no pip
wheels() {
    if "$PY" -m pip --version > /dev/null 2>&1; then
        "$PY" -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$@"
    else
        local wheel && for wheel in "$@"; do "$PY" -m zipfile -e "$wheel" "$SITE" || return; done
    fi
}

install() {
    mkdir -p "$SITE" && wheels .whl/*.whl || return
    # pandas 3's copy-on-write turns RecBole 1.2.1's chained in-place fills into no-ops: use pandas 2.3.3 there
    if ! "$PY" -c 'import sys, pandas; sys.exit(int(pandas.__version__.split(".")[0]) >= 3)'; then
        echo "pandas >= 3 here: installing .whl/pandas/" && wheels .whl/pandas/*.whl
    fi
}

versions() {
    "$PY" - "$OUT/environment.json" <<'EOF'
import json, platform, sys
import numpy, pandas, recbole, scipy, torch
cuda = torch.cuda.is_available()
versions = {
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(), "numpy": numpy.__version__, "pandas": pandas.__version__,
    "scipy": scipy.__version__, "recbole": recbole.__version__, "recbole_from": recbole.__file__,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
    "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None,
}
print(json.dumps(versions, indent=2))
open(sys.argv[1], "w").write(json.dumps(versions, indent=2))
EOF
}

# the protocol by the benchmark harness, from the data at $PROTOCOL_DATA (the CPU runs' path: same run hashes;
# copied there from $DATA_PATH where it holds no ml-1m-half)
protocol() {
    if [[ ! -f $PROTOCOL_DATA/ml-1m-half/ml-1m-half.inter ]]; then
        mkdir -p "$PROTOCOL_DATA" && cp -r "$DATA_PATH/ml-1m-half" "$PROTOCOL_DATA/" || return
    fi
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 "$PY" -m recbole_align benchmark --dataset=ml-1m-half "--data_path=$PROTOCOL_DATA" --seeds="$PROTOCOL_SEEDS" \
        --methods="[BC,ContinuedBC,ExpRSFT,RSFT,DRPO,PPO,DPO,GRPO]" --baselines="[]" $PROTOCOL_EPOCHS \
        --jobs="${GPU_CHECK_JOBS:-10}" --output_dir="$PROTOCOL_DIR"
}

# the protocol's finished runs: JSON, per-case results and logs, the BC checkpoints, the tables if it ended
pack_protocol() {
    pkill -f "recbole_align.*$PROTOCOL_DIR" ; sleep 2
    (cd "$PROTOCOL_DIR" && find . -maxdepth 1 -type f > /tmp/protocol_files && find runs -type f >> /tmp/protocol_files &&
     find checkpoints -name 'BC-*.pth' ! -name '*.last.pth' ! -name '*.partial.pth' >> /tmp/protocol_files &&
     tar czf "$OUT/protocol.tar.gz" -T /tmp/protocol_files) && echo "packed $(wc -l < /tmp/protocol_files) files"
}

export PY SITE OUT DATA_PATH PROTOCOL_SEEDS PROTOCOL_DIR PROTOCOL_EPOCHS PROTOCOL_DATA
export -f wheels install versions protocol
echo "gpu_check: $(date -u +%FT%TZ), device $DEVICE, gpu_id '$GPU_ID', data $DATA_PATH, $EPOCHS epochs" >> "$LOG"
command -v nvidia-smi > /dev/null && nvidia-smi >> "$LOG" 2>&1
step install 60 install
step versions 60 versions

COMMON=(--dataset=ml-1m-half "--data_path=$DATA_PATH" "--epochs=$EPOCHS" --mixed_precision=bf16 --show_progress=False
        "--checkpoint_dir=$SAVED" "--gpu_id=$GPU_ID")
if step BC 150 "$PY" -m recbole_align --model=BC --reward_head=True "${COMMON[@]}" \
        "--checkpoint_file=$SAVED/bc.pth" "--results_file=$OUT/BC.json"; then
    if [[ -n $PROTOCOL_SEEDS ]]; then
        (LOG=$OUT/protocol.log; step protocol $((DEADLINE - SECONDS - 30)) protocol) &
        PROTOCOL_PID=$!
    fi
    (LOG=$OUT/tests.log; step tests 240 env "RECBOLE_ALIGN_TEST_DEVICE=$DEVICE" "$PY" -m pytest -o addopts= -v \
        -p no:cacheprovider --durations=15 "${TESTS[@]}") &
    TESTS_PID=$!
    for method in "${METHODS[@]}"; do
        step "$method" 75 "$PY" -m recbole_align "--model=$method" "--pretrained_checkpoint=$SAVED/bc.pth" "${COMMON[@]}" \
            "--results_file=$OUT/$method.json"
    done
    wait "$TESTS_PID"
    step scaling $((DEADLINE - SECONDS - 20)) "$PY" benchmarks/scaling.py \
        --sizes="${GPU_CHECK_SCALING_SIZES:-[10k:1M,700k:1M]}" --methods="${GPU_CHECK_SCALING_METHODS:-[BC,ExpRSFT,PPO]}" \
        --config_files="${GPU_CHECK_SCALING_CONFIG:-}" --min_item_ratings="${GPU_CHECK_SCALING_MIN_ITEM_RATINGS:-1}" \
        --output_dir="$OUT/scaling"
    if [[ -n $PROTOCOL_SEEDS ]]; then
        wait "$PROTOCOL_PID"
        pack_protocol >> "$LOG" 2>&1
    fi
else
    for method in "${METHODS[@]}"; do printf '%s\tskipped (no BC)\t\t0\n' "$method" >> "$STEPS"; done
fi

"$PY" - "$OUT" "$DEVICE" <<'EOF'
import json, re, sys
from pathlib import Path

out, device = Path(sys.argv[1]), sys.argv[2]
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, code, seconds = line.split("\t")
    entry = {"name": name, "status": status, "exit": int(code) if code else None, "seconds": int(seconds)}
    results_file = out / f"{name}.json"
    if status == "ok" and results_file.is_file():
        r = json.loads(results_file.read_text())
        entry.update({
            "results_file": results_file.name, "device": r["config"]["device"],
            "test_filtered_ndcg@10": r["test_filtered"]["ndcg@10"], "test_ndcg@10": r["test"]["ndcg@10"],
            "seconds_per_epoch": r["seconds_per_epoch"], "epoch_train_seconds": [e["train_seconds"] for e in r["epoch_log"]],
            "peak_memory_mb": r["peak_memory_mb"], "avg_reward": r.get("avg_reward"),
        })
        if not entry["device"].startswith(device):
            entry["status"] = f"ran on {entry['device']}, not {device}"
    steps.append(entry)
tests = {}
tests_log = out / "tests.log"
for line in (tests_log.read_text().splitlines() if tests_log.is_file() else []):
    found = re.match(r"(tests/\S+::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)( |$)", line)
    if found:
        tests.setdefault(found.group(2).lower(), []).append(found.group(1))
versions = out / "environment.json"
summary = {
    "device": device, "versions": json.loads(versions.read_text()) if versions.is_file() else None,
    "steps": steps, "tests": {status: len(names) for status, names in tests.items()},
    "tests_failed": tests.get("failed", []) + tests.get("error", []),
}
bc = next((s for s in steps if s["name"] == "BC" and "seconds_per_epoch" in s), None)
summary["bc_seconds_per_epoch"] = bc and bc["seconds_per_epoch"]
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
print(json.dumps({k: summary[k] for k in ("tests", "bc_seconds_per_epoch")}))
for s in steps:
    print(s["name"], s["status"], s["seconds"], "s", s.get("test_filtered_ndcg@10"), s.get("seconds_per_epoch"))
EOF
echo "gpu_check: done in $SECONDS s; $OUT/gpu_check.json" | tee -a "$LOG"
