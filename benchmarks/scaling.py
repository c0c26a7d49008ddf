"""How time and memory grow with the catalogue and the number of ratings, on generated data (issues 23, 34).

    python benchmarks/scaling.py --output_dir=benchmarks/results/scaling
    python benchmarks/scaling.py --sizes="[696k:11.7M:811k:50]" --min_item_ratings=5 --methods="[BC,ExpRSFT,PPO]" \
        --config_files=properties/amazon-books.yaml --output_dir=benchmarks/results/scaling-amazon-books   # Table 5's shape

For each size ``items:ratings[:users[:history]]`` of ``--sizes`` (default: a catalogue of 10k, 100k and 700k
items at 1M ratings, and 0.1M and 5M ratings at 100k items; ``--users`` users and the HSTU window unless the
size names them: Amazon Books in the paper's Table 1 is 695,762 items, 811,227 users and 14.47 ratings a
user, 11.7M ratings, and the HSTU reference's window for it is 50), a data set is generated (every item
rated at least once, the rest of the ratings drawn from a Zipf-like popularity, ratings 1-5, one timestamp
a day per user) and ONE worker process, on ``--threads`` thread(s), measures in order: RecBole's data
loading (dataset and splits), an epoch of each of ``--methods`` (default every method; BC is HSTU with the
reward head, the others from a fresh model: a step's cost does not depend on the weights), each with the
package's defaults (``item_updates`` and ``policy_estimator`` choose by the catalogue, and the log line of
the choice is kept), and one full evaluation of the test cases. A training row is ONE WHOLE EPOCH after a
warm-up batch (``--max_batches`` N > 0: the first N batches, reported as seconds per batch x batches
per epoch, a projection). After each step the worker's peak resident memory so far is read, so the last
row's is the whole process's peak.
Writes ``scaling.json`` (the measurements, machine, date, command), ``table.md`` and ``scaling.png``.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from throughput import machine, timed_epoch  # noqa: E402 (benchmarks/ is the script's folder)

from recbole_align.memory import DEFAULT_BUDGET_MB, catalogue_rows  # noqa: E402
from recbole_align.safe_write import write_text, written_atomically  # noqa: E402

DEFAULT_SIZES = "[10k:1M,100k:1M,700k:1M,100k:0.1M,100k:5M]"
STEPS = ("BC", "ExpRSFT", "RSFT", "DRPO", "ContinuedBC", "PPO", "GRPO", "DPO")  # in this order; evaluation last
SCALE = {"k": 1_000, "M": 1_000_000}


def count(text):
    """'700k' -> 700000, '0.1M' -> 100000."""
    text = text.strip()
    return int(float(text[:-1]) * SCALE[text[-1]]) if text[-1:] in SCALE else int(text)


def generate(folder, name, n_users, n_items, n_ratings, seed=0, per_item=1):
    """``folder/name/name.inter``: n_ratings ratings of n_users users (as equal shares as divide) over
    n_items items, each item rated at least ``per_item`` times when n_ratings allows (5: what a dataset filtered
    at 5 ratings an item has, so that its filter keeps them all), the others Zipf-like (p ~ 1/(rank + 10)); at
    most one rating of an item per user is not enforced (RecBole keeps repeats)."""
    rng = np.random.default_rng(seed)
    popular = 1 / (np.arange(n_items) + 10.0)
    every = np.tile(np.arange(n_items), per_item)[:n_ratings]
    drawn = rng.choice(n_items, size=max(0, n_ratings - len(every)), p=popular / popular.sum())
    items = rng.permutation(np.concatenate([every, drawn])) + 1
    users = np.sort(np.arange(n_ratings) % n_users) + 1
    step = np.arange(n_ratings) - np.searchsorted(users, users)  # position within the user's history
    quality = rng.normal(3.5, 0.7, n_items + 1)
    ratings = np.clip(np.rint(quality[items] + rng.normal(0, 0.8, n_ratings)), 1, 5)
    frame = pd.DataFrame({"user_id:token": users, "item_id:token": items, "rating:float": ratings,
                          "timestamp:float": 1_000_000_000 + 86_400 * step + users})
    (folder / name).mkdir(parents=True, exist_ok=True)
    with written_atomically(folder / name / f"{name}.inter") as path:  # an interrupted run leaves no partial file
        frame.to_csv(path, sep="\t", index=False)


def peak_mb():
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_peak_mb():
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def worker(args):
    """The measurements of one data set, in this process; prints them as one JSON line."""
    import torch
    from recbole.utils import init_seed

    from recbole_align.config import build_config
    from recbole_align.data import length_grouped, load_dataset, split_loaders
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer, resolve_settings, training_ratings

    import logging

    torch.set_num_threads(args.threads)
    base = {"data_path": args.data_path, "state": "error", "show_progress": False, "checkpoint_dir": args.scratch,
            **({"MAX_ITEM_LIST_LENGTH": args.history} if args.history else {})}
    choices = []  # the trainers' log lines of what they chose for this catalogue
    logging.getLogger().setLevel(logging.INFO)
    handler = logging.Handler()
    handler.emit = lambda record: choices.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    rows = [{"step": "start", "seconds": 0.0, "peak_mb": peak_mb()}]
    start = time.perf_counter()
    files = args.config_files.split() if args.config_files else []  # e.g. a dataset's settings: its model's size
    config, spec = build_config("BC", args.dataset, files, {**base, "reward_head": True})
    train, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    train = length_grouped(config, train)
    rows.append({"step": "load", "seconds": time.perf_counter() - start, "peak_mb": peak_mb(),
                 "catalogue": train._dataset.item_num - 1})
    print(json.dumps(rows), flush=True)
    for model in args.methods.strip("[] ").split(","):
        config, spec = build_config(model, args.dataset, files, {**base, "reward_head": True})
        init_seed(config["seed"], config["reproducibility"])
        choices.clear()
        trainer = spec.trainer_class(config, spec.model_class(config, train._dataset).to(config["device"]))
        if isinstance(trainer, RewardWeightedTrainer):
            trainer.settings = resolve_settings(config, training_ratings(train._dataset, config))
        seconds = timed_epoch(trainer, train, args.max_batches, repeats=1)
        chosen = "; ".join(line for line in choices if line.startswith(("item table updates", "policy estimator")))
        rows.append({"step": f"{model} epoch", "seconds": seconds, "peak_mb": peak_mb(), "gpu_peak_mb": gpu_peak_mb(),
                     "timed_batches": args.max_batches or len(train), "batches_per_epoch": len(train), "chosen": chosen})
        print(json.dumps(rows), flush=True)
    start = time.perf_counter()
    trainer.evaluate(test, load_best_model=False)
    rows.append({"step": "evaluation", "seconds": time.perf_counter() - start, "peak_mb": peak_mb(),
                 "cases": len(test._dataset)})
    print(json.dumps(rows))


def run_worker(args, name):
    """One worker process for the generated data set ``name``; its rows."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"--threads={args.threads}",
               f"--data_path={args.output_dir / 'data'}", f"--dataset={name}", f"--max_batches={args.max_batches}",
               f"--methods={args.methods}", f"--history={args.history}", f"--scratch={args.output_dir / 'scratch'}",
               f"--config_files={' '.join(str(Path(f).resolve()) for f in args.config_files.split())}"]
    rows = []
    with tempfile.TemporaryFile("w+") as errors, \
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=errors, text=True) as process:
        for line in process.stdout:  # the rows so far, after each step: a worker that dies keeps what it measured
            if line.startswith("["):
                rows = json.loads(line)
                print(f"{name}: {rows[-1]['step']} {rows[-1]['seconds']:.1f} s, peak {rows[-1]['peak_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
        process.wait()
        errors.seek(0)
        error = errors.read().strip() or f"exit status {process.returncode}"
    if process.returncode != 0:
        if len(rows) < 2:
            raise RuntimeError(f"worker for [{name}] failed:\n{error[-3000:]}")
        rows.append({"step": "failed", "seconds": None, "peak_mb": rows[-1]["peak_mb"], "error": error[-300:]})
    return rows


def measurements_table(results):
    """One row per (size, step): seconds and the peak resident memory so far."""
    frames = [pd.DataFrame(entry["rows"]).assign(size=entry["size"], n_items=entry["items"], n_ratings=entry["ratings"])
              for entry in results["sizes"]]
    return pd.concat(frames, ignore_index=True)


def report(results):
    table = measurements_table(results).drop(columns="eval_batch_size", errors="ignore")  # a Config's, not the loader's
    table = table[table["step"] != "start"]
    blocks = [catalogue_rows(n + 1, DEFAULT_BUDGET_MB) for n in table["n_items"]]
    table["cases per evaluation batch"] = [min(4096, b) if step == "evaluation" else None
                                           for b, step in zip(blocks, table["step"])]
    seconds = table.pivot_table(index="size", columns="step", values="seconds", sort=False)
    peak = table.groupby("size", sort=False)["peak_mb"].max().rename("peak memory (MB)")
    summary = pd.concat([seconds, peak], axis=1)
    projected = results["max_batches"], results.get("on_policy_batches")
    epochs = ("one whole training epoch" if not projected[0] else
              f"one training epoch projected from its first {projected[0]} batches"
              + (f" (PPO and DPO {projected[1]})" if projected[1] else ""))
    lines = [f"# Scaling on generated data ({results['date']}, {results['machine']}, {results['threads']} thread(s))", "",
             f"Command: `{results['command']}`", "",
             f"Users: {results['users']} unless the size names them. Seconds: data loading, {epochs} of each method "
             "(after a warm-up batch), one evaluation of the test cases; peak resident memory of the one process that "
             "ran them all.", "",
             summary.round(1).to_markdown(), "", "## Every step (peak memory so far)", "",
             table.drop(columns=["n_items", "n_ratings"]).round(2).to_markdown(index=False, missingval="")]
    return "\n".join(lines) + "\n"


def plot(results, path):
    table = measurements_table(results)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, (axis_key, fixed_key, label) in enumerate((("n_items", "n_ratings", "catalogue (items)"),
                                                       ("n_ratings", "n_items", "ratings"))):
        mode = table.groupby(fixed_key)["size"].nunique().idxmax()  # the series with the most sizes
        part = table[table[fixed_key] == mode]
        for step in ["load", *(f"{m} epoch" for m in STEPS), "evaluation"]:
            rows = part[part["step"] == step].sort_values(axis_key)
            axes[0, col].plot(rows[axis_key], rows["seconds"], marker="o", label=step)
        memory = part.groupby(axis_key)["peak_mb"].max()
        axes[1, col].plot(memory.index, memory.values / 1024, marker="o")
        axes[1, col].axhline(8, color="grey", linestyle="--", label="8 GB target")
        for axis, ylabel in ((axes[0, col], "seconds"), (axes[1, col], "peak memory (GB)")):
            axis.set(xscale="log", yscale="log" if ylabel == "seconds" else "linear", xlabel=label, ylabel=ylabel,
                     title=f"{fixed_key.replace('n_', '')} fixed at {mode:,}")
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f'"[items:ratings[:users[:history]],...]" (default {DEFAULT_SIZES})')
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--min_item_ratings", type=int, default=1,
                        help="ratings every item gets at least (5 with a dataset's filter at 5 an item, so that it keeps them)")
    parser.add_argument("--methods", default=f"[{','.join(STEPS)}]", help="the methods timed, in order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config_files", default="",
                        help='yaml files for every run, e.g. "properties/amazon-books.yaml" (its model size and filters, on the '
                             "generated data)")
    parser.add_argument("--max_batches", type=int, default=0, help="0: whole epochs; N: projected from N batches")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/scaling-epochs"))
    parser.add_argument("--history", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--report_only", action="store_true", help="rewrite table.md and scaling.png from scaling.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data_path", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
        return worker(args)
    args.output_dir = args.output_dir.resolve()
    results_file = args.output_dir / "scaling.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {"sizes": []}
    if args.report_only:
        write_text(args.output_dir / "table.md", report(results))
        plot(results, args.output_dir / "scaling.png")
        return print(report(results))
    results.update({
        "command": " ".join(["python", "benchmarks/scaling.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(), "machine": machine(),
        "users": args.users, "threads": args.threads, "max_batches": args.max_batches, "on_policy_batches": None,
        "min_item_ratings": args.min_item_ratings,
    })
    done = {entry["size"] for entry in results["sizes"]}  # a finished size is kept (rerun: delete scaling.json)
    for size in [s.strip() for s in args.sizes.strip("[] ").split(",") if s.strip()]:
        if size in done:
            continue
        items, ratings, users, history = [*(count(part) for part in size.split(":")), args.users, 0][:4]
        name = f"scale-{size.replace(':', '-')}" + (f"-min{args.min_item_ratings}" if args.min_item_ratings > 1 else "")
        if not (args.output_dir / "data" / name / f"{name}.inter").is_file():  # the generator is seeded: the same file
            print(f"{size}: generating {ratings} ratings of {users} users over {items} items", file=sys.stderr, flush=True)
            generate(args.output_dir / "data", name, users, items, ratings, per_item=args.min_item_ratings)
        args.history = history
        rows = run_worker(args, name)
        results["sizes"].append({"size": size, "items": items, "ratings": ratings, "users": users, "history": history or None,
                                 "rows": rows})
        write_text(results_file, json.dumps(results, indent=2))  # each finished size at once
        print(f"{size}: peak {max(r['peak_mb'] for r in rows):.0f} MB", file=sys.stderr, flush=True)
    write_text(args.output_dir / "table.md", report(results))
    plot(results, args.output_dir / "scaling.png")
    print(report(results))


if __name__ == "__main__":
    main()
