"""Training epochs as the catalogue grows, code trees side by side (issue 34).

    git worktree add /tmp/recbole-align-e3f7ce8 e3f7ce8     # the code before sparse item updates
    python benchmarks/catalogue_cost.py --code="[old=/tmp/recbole-align-e3f7ce8,new=.]" \
        --sizes="[10k,700k]" --output_dir=benchmarks/results/catalogue_cost

For each catalogue size (generated data as benchmarks/scaling.py makes it: ``--users`` users, ``--ratings``
ratings, every item rated at least once), each code tree in turn measures, in a worker process of its
own on ``--threads`` thread(s), ONE WHOLE epoch (``--max_batches`` N: projected from N batches) of each of
``--methods`` (default HSTU BC with the reward head, as PPO's BC, and Exp-RSFT) from the freshly
initialised model, each after a warm-up batch (``evaluation`` in ``--methods``: one full evaluation of the
test cases, each ranked over the whole catalogue, by a fresh BC model), with the tree's defaults and the tree's
settings (``path@key=value``; the log lines of what ``item_updates`` and ``policy_estimator`` chose are kept).
The trees alternate within a size, so that both see the same machine. Writes ``catalogue_cost.json`` (every measurement, machine, date,
command; a rerun with the same settings keeps the measurements it has) and ``table.md`` (seconds per epoch,
each tree's ratio to the first, each size's ratio to the smallest).
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from scaling import count, generate  # noqa: E402 (benchmarks/ is the script's folder)
from throughput import parse_list, timed_epoch  # noqa: E402

from recbole_align.safe_write import write_text  # noqa: E402

METHODS = "[BC,ExpRSFT]"
EVALUATION = "evaluation"  # in --methods: one full evaluation of the test cases by a fresh BC model


def worker(args):
    """Seconds of one whole epoch of each of METHODS in this process (this tree's code); prints one JSON line."""
    import logging

    import torch
    from recbole.utils import init_seed

    from recbole_align.config import build_config
    from recbole_align.data import length_grouped, load_dataset, split_loaders
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer, resolve_settings, training_ratings

    torch.set_num_threads(args.threads)
    base = {"data_path": args.data_path, "state": "info", "show_progress": False, "checkpoint_dir": args.scratch,
            "reward_head": True}
    overrides = dict(item.split("=", 1) for item in args.settings.split(";") if item)
    messages = []
    logging.getLogger().setLevel(logging.INFO)  # the trainer's choice of item updates is an INFO line
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    rows, train = [], None
    for model in parse_list(args.methods):
        trained = "BC" if model == EVALUATION else model
        config, spec = build_config(trained, args.dataset, config_dict={**base, **overrides})
        if train is None:
            train, _, test = split_loaders(config, load_dataset(config, spec.model_class))
            train = length_grouped(config, train)
        init_seed(config["seed"], config["reproducibility"])
        logging.getLogger().addHandler(handler)
        trainer = spec.trainer_class(config, spec.model_class(config, train._dataset))
        logging.getLogger().removeHandler(handler)
        if isinstance(trainer, RewardWeightedTrainer):
            trainer.settings = resolve_settings(config, training_ratings(train._dataset, config))
        metrics = None
        if model == EVALUATION:  # every test case ranked over the whole catalogue, once; its metrics kept
            start = time.perf_counter()
            metrics = {key: float(value) for key, value in trainer.evaluate(test, load_best_model=False).items()}
            seconds = time.perf_counter() - start
        else:
            seconds = timed_epoch(trainer, train, args.max_batches, repeats=1)
        chosen = "; ".join(m for m in messages if m.startswith(("item table updates:", "policy estimator:")))
        rows.append({"method": model, "seconds_per_epoch": seconds, "batches_per_epoch": len(train), "metrics": metrics,
                     "chosen": chosen or "(before the choice)", "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
        messages.clear()
    print(json.dumps(rows))


def run_worker(args, tree, name):
    """One worker for the code tree ``tree`` ("path" or "path@key=value;key=value", settings for every run)."""
    tree, _, settings = tree.partition("@")
    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "OMP_NUM_THREADS": str(args.threads),
           "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"--threads={args.threads}",
               f"--data_path={args.output_dir / 'data'}", f"--dataset={name}", f"--max_batches={args.max_batches}",
               f"--scratch={args.output_dir / 'scratch'}", f"--settings={settings}", f"--methods={args.methods}"]
    process = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"worker for [{tree}] on [{name}] failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def report(results):
    table = pd.DataFrame([{**row, "size": entry["size"], "code": entry["code"]} for entry in results["runs"]
                          for row in entry["rows"]])
    seconds = table.pivot_table(index=["method", "size"], columns="code", values="seconds_per_epoch", sort=False)
    names = [name for name, _ in results["code"]]  # [name, path] pairs
    for name in names[1:]:
        seconds[f"{name} / {names[0]}"] = seconds[name] / seconds[names[0]]
    smallest = min(table["size"], key=count)
    epochs = "every batch" if not results["max_batches"] else f"projected from {results['max_batches']} batches"
    for name in names:
        seconds[f"{name}: / {smallest}"] = [seconds.loc[(method, size), name] / seconds.loc[(method, smallest), name]
                                            for method, size in seconds.index]
    chosen = table.pivot_table(index=["method", "size"], columns="code", values="chosen", aggfunc="first", sort=False)
    lines = [f"# Whole epochs as the catalogue grows ({results['date']}, {results['machine']}, {results['threads']} thread(s))",
             "", f"Command: `{results['command']}`", "",
             f"{results['users']} users, {results['ratings']:,} ratings; seconds of one whole training epoch "
             f"({epochs}, "
             "after a warm-up batch), HSTU with the reward head, each tree's defaults; the `evaluation` row: one "
             "full evaluation of the test cases.", "",
             seconds.round(2).to_markdown(), "", "## What each tree chose (its log)", "", chosen.to_markdown(), "",
             "## Peak memory (MB) of each worker", "",
             table.pivot_table(index="size", columns="code", values="peak_mb", aggfunc="max", sort=False).round(0).to_markdown()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--code", default="[new=.]",
                        help='code trees "[name=path,...]" (path@key=value;key=value: with those settings); ratios to the first')
    parser.add_argument("--sizes", default="[10k,700k]", help="catalogue sizes")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--ratings", default="1M")
    parser.add_argument("--methods", default=METHODS, help="the methods timed, in order")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max_batches", type=int, default=0, help="0: whole epochs")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/catalogue_cost"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data_path", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
        return worker(args)
    args.output_dir = args.output_dir.resolve()
    code = [tuple(item.split("=", 1)) for item in parse_list(args.code)]
    results_file = args.output_dir / "catalogue_cost.json"
    settings = {"code": [list(pair) for pair in code], "users": args.users, "ratings": count(args.ratings),
                "threads": args.threads, "max_batches": args.max_batches, "methods": args.methods}
    earlier = json.loads(results_file.read_text()) if results_file.is_file() else {}
    kept = earlier.get("runs", []) if all(earlier.get(k) == v for k, v in settings.items()) else []
    results = {"command": " ".join(["python", "benchmarks/catalogue_cost.py", *(argv if argv is not None else sys.argv[1:])]),
               "date": datetime.date.today().isoformat(),
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", **settings, "runs": kept}
    done = {(run["size"], run["code"]) for run in kept}  # a finished measurement of the same settings is kept
    for size in parse_list(args.sizes):
        name = f"items-{size}"
        if not (args.output_dir / "data" / name / f"{name}.inter").is_file():
            generate(args.output_dir / "data", name, args.users, count(size), count(args.ratings))
        for label, tree in code:
            if (size, label) in done:
                continue
            rows = run_worker(args, tree, name)
            results["runs"].append({"size": size, "code": label, "rows": rows})
            print(f"{size} {label}: {rows}", file=sys.stderr, flush=True)
            write_text(results_file, json.dumps(results, indent=2))
    write_text(args.output_dir / "table.md", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
