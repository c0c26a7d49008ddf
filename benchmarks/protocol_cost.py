"""The cost of the paper's protocol (BC 40 epochs, then six methods x 30 epochs, per-epoch test metrics
on), measured in miniature at this code and at an older commit side by side, on one thread.

    git worktree add /tmp/recbole-align-59b9b81 59b9b81
    OMP_NUM_THREADS=1 python benchmarks/protocol_cost.py --data_path=../shared/data --dataset=ml-1m-half \\
        --old=/tmp/recbole-align-59b9b81 --output_dir=benchmarks/results/protocol_cost

For each row (BC with the reward head, then each method for one epoch from that BC checkpoint) the old
and the new tree run one after the other, each a fresh ``python -m recbole_align`` process with the
tree on ``PYTHONPATH``, so both see the same load. A row's seconds per epoch are its run's
``train_seconds`` (one epoch's training, its valid and test evaluation, the checkpoint); the rest of
the process's wall time (data loading, the end-of-run evaluation, Avg Reward) is its fixed cost. One
full seed = BC 40 epochs + every method 30 epochs + each run's fixed cost once, in core-minutes.
Writes ``protocol_cost.json`` (every measurement, the machine, the date, the command) and ``table.md``.

With ``--metrics_check``, instead: every row for ``--metrics_epochs`` (3) epochs on ``--dataset`` (e.g. ml-100k)
at both trees, and the metrics of every split at the best epoch and each epoch's filtered test NDCG@10 side by
side (``metrics_unchanged.json``, ``metrics_unchanged.md``): the estimator is the same where they are equal.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from recbole_align.safe_write import write_text

REPO = Path(__file__).resolve().parent.parent
METHODS = ("ExpRSFT", "RSFT", "DRPO", "PPO", "GRPO", "DPO")
PROTOCOL_EPOCHS = {"BC": 40, **{method: 30 for method in METHODS}}


def timed_run(tree, scratch, name, model, overrides):
    """(results dict, wall seconds) of one run ``name`` of ``python -m recbole_align`` from code ``tree``."""
    scratch.mkdir(parents=True, exist_ok=True)
    results_file = scratch / f"{name}.json"
    command = [sys.executable, "-m", "recbole_align", f"--model={model}", f"--checkpoint_file={scratch / name}.pth",
               f"--results_file={results_file}", f"--checkpoint_dir={scratch}", "--show_progress=False",
               "--state=WARNING", *overrides]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    process = subprocess.run(command, cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{process.stderr[-2000:]}")
    return json.loads(results_file.read_text()), time.perf_counter() - start


def each_run(args, epochs):
    """(row, tree label, results, wall seconds) of BC and each method run for ``epochs`` epochs from that
    BC, at the old and the new tree one after the other."""
    data = [f"--dataset={args.dataset}", f"--epochs={epochs}", "--epoch_test_metrics=True"]
    if args.data_path:  # else RecBole's own (ml-100k ships with it)
        data.append(f"--data_path={Path(args.data_path).resolve()}")
    trees = {"new": REPO, "old": Path(args.old).resolve()}
    for model in ("BC", *METHODS):
        for label, tree in trees.items():
            scratch = Path(args.output_dir).resolve() / "runs" / label
            if model == "BC":
                results, wall = timed_run(tree, scratch, model, "HSTU", [*data, "--reward_head=True"])
            else:
                results, wall = timed_run(tree, scratch, model, model, [*data, f"--pretrained_checkpoint={scratch / 'BC.pth'}"])
            yield model, label, results, wall


def measure(args):
    """One row per (run, tree): seconds per epoch and fixed seconds."""
    rows = []
    for model, label, results, wall in each_run(args, epochs=1):
        rows.append({
            "run": model, "code": label, "seconds_per_epoch": results["train_seconds"],
            "training_seconds": results["seconds_per_epoch"], "fixed_seconds": wall - results["train_seconds"],
            "test_ndcg@10_filtered": results["test_filtered"]["ndcg@10"],
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def metrics_side_by_side(args):
    """(records, markdown): per row, the old and the new tree's metrics of every split (best epoch) and
    filtered test NDCG@10 per epoch, and whether they are equal to the 4 decimals RecBole reports."""
    runs = {}
    for model, label, results, _ in each_run(args, epochs=args.metrics_epochs):
        runs.setdefault(model, {})[label] = results
    records = []
    for model, pair in runs.items():
        splits = {split: (pair["old"][split], pair["new"][split]) for split in ("valid", "valid_filtered", "test", "test_filtered")}
        curves = [[entry["test_filtered"]["ndcg@10"] for entry in pair[label]["epoch_log"]] for label in ("old", "new")]
        records.append({
            "run": model, "metrics equal": all(old == new for old, new in splits.values()),
            "epochs equal": sum(a == b for a, b in zip(*curves)), "epochs": len(curves[0]),
            "test_filtered ndcg@10 per epoch, old": curves[0], "new": curves[1],
            "largest metric difference": max(abs(old[k] - new[k]) for old, new in splits.values() for k in old),
        })
    return records, pd.DataFrame(records).to_markdown(index=False)


def summarise(rows):
    """The table: per row, old and new seconds per epoch, the ratio, and a full seed in core-minutes."""
    frame = pd.DataFrame(rows)
    per_epoch = frame.pivot(index="run", columns="code", values="seconds_per_epoch").loc[["BC", *METHODS]]
    frame["evaluation_seconds"] = frame["seconds_per_epoch"] - frame["training_seconds"]
    evaluation = frame.pivot(index="run", columns="code", values="evaluation_seconds").loc[per_epoch.index]
    fixed = frame.pivot(index="run", columns="code", values="fixed_seconds").loc[per_epoch.index]
    epochs = pd.Series(PROTOCOL_EPOCHS)[per_epoch.index]
    seed_minutes = (per_epoch.mul(epochs, axis=0) + fixed) / 60
    table = pd.DataFrame({
        "s/epoch, old": per_epoch["old"], "s/epoch, new": per_epoch["new"],
        "speed-up": per_epoch["old"] / per_epoch["new"],
        "eval s/epoch, old": evaluation["old"], "eval s/epoch, new": evaluation["new"],
        "x BC epoch, new": per_epoch["new"] / per_epoch.loc["BC", "new"],
        "epochs": epochs, "core-min, old": seed_minutes["old"], "core-min, new": seed_minutes["new"],
    })
    table.loc["one seed"] = {"core-min, old": seed_minutes["old"].sum(), "core-min, new": seed_minutes["new"].sum(),
                             "speed-up": seed_minutes["old"].sum() / seed_minutes["new"].sum()}
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: RecBole's, for ml-100k)")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--old", required=True, help="a checkout of the older commit (git worktree)")
    parser.add_argument("--output_dir", default="benchmarks/results/protocol_cost")
    parser.add_argument("--metrics_check", action="store_true", help="compare the metrics instead of the cost")
    parser.add_argument("--metrics_epochs", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="only rewrite table.md from the output's protocol_cost.json")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if args.metrics_check:
        records, markdown = metrics_side_by_side(args)
        write_text(out / "metrics_unchanged.json", json.dumps({"command": " ".join(sys.argv), "rows": records}, indent=2))
        write_text(out / "metrics_unchanged.md", markdown + "\n")
        print(markdown)
        return
    if args.report:
        table = summarise(json.loads((out / "protocol_cost.json").read_text())["rows"])
        write_text(out / "table.md", table.to_markdown(floatfmt=".2f") + "\n")
        print(table.to_markdown(floatfmt=".2f"))
        return
    rows = measure(args)
    table = summarise(rows)
    old_commit = subprocess.run(["git", "-C", args.old, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    new_commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "command": " ".join(sys.argv), "date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "threads": 1, "old_commit": old_commit, "new_commit": new_commit, "rows": rows,
    }
    write_text(out / "protocol_cost.json", json.dumps(record, indent=2))
    write_text(out / "table.md", table.to_markdown(floatfmt=".2f") + "\n")
    print(table.to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()
