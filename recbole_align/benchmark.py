"""One command for the Exp-RSFT paper's comparison, with seeds, RecBole baselines, plots and costs.

    python -m recbole_align.benchmark --dataset=ml-1m-half --data_path=../shared/data --seeds="[2020,2021,2022]"
    python -m recbole_align.benchmark --dataset=ml-100k --seeds="[2020]" --methods="[BC,ExpRSFT,DPO]"

For each seed: BC of the backbone (``--backbone``, default HSTU) is trained once, with the reward
head, and every post-training method starts from that checkpoint; the RecBole baselines train with
RecBole's own pipeline for at most ``--baseline_epochs`` epochs. Every run is a process of
``run_recbole_align.py`` whose results JSON (and log) is kept under ``--output_dir``, named
``<run>-seed<seed>-<hash>.json`` where the hash covers the run's model, dataset, config files and
settings (and, through the BC checkpoint's name, BC's): rerunning the command skips the runs whose
JSON exists, so an interrupted benchmark resumes. A failed run is reported and left out of the tables.

Writes to ``--output_dir``: ``table.md`` (Table 3 on the rating-filtered test cases, the unfiltered
metrics, the reward model's Table 2, the cost table; mean ± std over seeds, % change from BC, best in
bold), ``table.csv``, ``unfiltered.csv``, ``reward_model.csv``, ``cost.csv``, ``epochs.png``
(per-epoch filtered valid NDCG@10 of every method, the paper's Figure 2 view) and, with
``--sweep_lambda``, ``lambda_sweep.png`` (Figure 3). Any other ``--key=value`` is a config override
for every run; ``--epochs`` and ``--bc_epochs`` set the post-training and BC epoch budgets.
"""

import argparse
import ast
import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from time import time

import numpy as np
import torch

from recbole_align.diagnostics import PREDICTORS, markdown_table, run_diagnostics, write_table
from recbole_align.errors import AlignError
from recbole_align.quick_start import command_line_overrides
from recbole_align.sweep import parse_lambdas

METHODS = ("BC", "ExpRSFT", "RSFT", "DRPO", "PPO", "DPO")
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec")
COST_KEYS = ("seconds_per_epoch", "epochs_run", "train_seconds", "peak_memory_mb")
COLUMNS = (("NDCG@10", "ndcg@10"), ("NDCG@50", "ndcg@50"), ("HR@10", "hit@10"), ("HR@50", "hit@50"), ("MRR", "mrr"))
RUN_SCRIPT = Path(__file__).resolve().parent.parent / "run_recbole_align.py"


@dataclass
class Run:
    """One process of run_recbole_align.py: ``label`` is its row in the tables."""

    label: str
    model: str
    seed: int
    settings: dict  # config overrides set by the benchmark (the user's --key=value come on top)
    results: dict = field(default=None)
    error: str = None


def parse_list(text, name, kind=str):
    """'[a,b]' or 'a,b' -> [kind(a), kind(b)], or a clear error."""
    try:
        values = ast.literal_eval(text)
        values = list(values) if isinstance(values, (list, tuple)) else [values]
    except (ValueError, SyntaxError):
        values = [v for v in text.strip("[]").split(",") if v.strip()]
    try:
        values = [kind(v.strip() if isinstance(v, str) else v) for v in values]
    except ValueError:
        values = []
    if not values:
        raise AlignError(f"--{name} must be a non-empty list, e.g. \"[a,b]\"; got {text!r}.")
    return values


def run_hash(run, dataset, config_files, user_args):
    """12 hex digits naming everything that decides a run's results (model, data, config, seed)."""
    files = {str(f): Path(f).read_text() for f in config_files}
    key = {"model": run.model, "dataset": dataset, "seed": run.seed, "settings": run.settings,
           "files": files, "args": sorted(user_args)}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def execute(run, dataset, output_dir, config_files, user_args):
    """Run ``run`` in its own process (or reuse its results JSON); returns the seconds it took (0 if reused)."""
    name = run.label.replace(" λ=", "-lambda")
    stem = f"{name}-seed{run.seed}-{run_hash(run, dataset, config_files, user_args)}"
    results_file, log_file = output_dir / "runs" / f"{stem}.json", output_dir / "runs" / f"{stem}.log"
    run.settings["checkpoint_file"] = str(output_dir / "checkpoints" / f"{stem}.pth")
    if results_file.is_file():
        run.results = json.loads(results_file.read_text())
        return 0.0
    start = time()
    command = [
        sys.executable, str(RUN_SCRIPT), f"--model={run.model}", f"--dataset={dataset}",
        *([f"--config_files={' '.join(str(f) for f in config_files)}"] if config_files else []),
        *(f"--{key}={value}" for key, value in run.settings.items()), *user_args,
        f"--results_file={results_file}",
        *([] if any(arg.startswith("--show_progress=") for arg in user_args) else ["--show_progress=False"]),
    ]
    with open(log_file, "w") as log:
        process = subprocess.run(command, cwd=output_dir, stdout=log, stderr=subprocess.STDOUT, check=False)
    if process.returncode == 0 and results_file.is_file():
        run.results = json.loads(results_file.read_text())
    else:
        lines = log_file.read_text().strip().splitlines() or ["no output"]
        run.error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
    return time() - start


def plan(seeds, methods, baselines, lambdas, backbone, bc_epochs, epochs, baseline_epochs):
    """The runs of one benchmark, in order: per seed, BC, the methods, the λ sweep, then the baselines.
    A post-training run's ``pretrained_checkpoint`` is filled in once its seed's BC has run."""
    runs = []
    for seed in seeds:
        bc = {"backbone": backbone, "reward_head": True, "seed": seed}
        runs.append(Run("BC", "BC", seed, {**bc, **({"epochs": bc_epochs} if bc_epochs is not None else {})}))
        post = {"backbone": backbone, "seed": seed, **({"epochs": epochs} if epochs is not None else {})}
        runs += [Run(m, m, seed, dict(post)) for m in methods if m != "BC"]
        runs += [Run(f"ExpRSFT λ={lam:g}", "ExpRSFT", seed, {**post, "reward_lambda": lam}) for lam in lambdas]
        runs += [Run(b, b, seed, {"seed": seed, "epochs": baseline_epochs}) for b in baselines]
    return runs


def kind(run):
    """BC, post-training (methods and the λ sweep) or baseline: runs of one kind cost alike."""
    return "BC" if run.model == "BC" else "post" if run.model in METHODS else "baseline"


def remaining_seconds(runs, spent):
    """Estimated seconds of ``runs``: the mean of the finished runs with the same label (another
    seed's), else of their kind, else of all runs. ``spent``: {label or kind: [seconds]}."""
    overall = [s for key, seconds in spent.items() if key in ("BC", "post", "baseline") for s in seconds]
    if not overall:
        return 0.0
    return sum(np.mean(spent.get(run.label) or spent.get(kind(run), overall)) for run in runs)


def mean_std(values):
    """(mean, std over seeds; 0 for one seed) of the non-None values, or None if there are none."""
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else None


def aggregate(runs, split):
    """{label: {column: (mean, std)}} over seeds of the finished runs: the metrics of ``split``,
    Avg Reward and the costs."""
    by_label = {}
    for run in runs:
        if run.results is not None:
            by_label.setdefault(run.label, []).append(run.results)
    table = {}
    for label, results in by_label.items():
        row = {key: mean_std([r[split][key] for r in results]) for _, key in COLUMNS}
        row["avg_reward"] = mean_std([r.get("avg_reward") for r in results])
        for key in COST_KEYS:
            row[key] = mean_std([r[key] for r in results])
        row["seeds"] = len(results)
        table[label] = row
    return table


def format_table(rows, columns, base="BC", bold_best=True, first="Method"):
    """Markdown: one row per label with "mean ± std" per column (with more than one seed), the % change
    of the mean from ``base``'s and, with ``bold_best``, the highest mean of each column in bold.
    ``rows``: {label: {key: (mean, std) or None, "seeds": n}}; ``columns``: [(header, key)]."""
    best = {}
    for _, key in columns:
        means = [row[key][0] for row in rows.values() if row.get(key) is not None]
        best[key] = max(means) if means else None
    lines = []
    for label, row in rows.items():
        cells = []
        for _, key in columns:
            if row.get(key) is None:
                cells.append("n/a")
                continue
            mean, std = row[key]
            text = f"{mean:.4f}" + (f" ± {std:.4f}" if row.get("seeds", 1) > 1 else "")
            if bold_best and mean == best[key]:
                text = f"**{text}**"
            base_value = rows.get(base, {}).get(key)
            if label != base and base_value is not None and base_value[0]:
                text += f" ({(mean - base_value[0]) / base_value[0] * 100:+.1f}%)"
            cells.append(text)
        lines.append([label, *cells])
    return markdown_table([first, *(header for header, _ in columns)], lines)


def cost_table(rows, base="BC"):
    """Seconds per epoch, epochs, training seconds and peak memory (means over seeds), each ÷ BC's."""
    header = ["Method", "s/epoch", "epochs", "train s", "peak MB"]
    lines = []
    for label, row in rows.items():
        cells = []
        for key in COST_KEYS:
            mean = row[key][0]
            base_mean = rows.get(base, {}).get(key, (None,))[0]
            ratio = f" ({mean / base_mean:.2f}x)" if label != base and base_mean else ""
            cells.append(f"{mean:.1f}{ratio}")
        lines.append([label, *cells])
    return markdown_table(header, lines)


def csv_rows(rows, columns):
    """Flat CSV rows: label, seeds, then <key>_mean and <key>_std of every column."""
    out = []
    for label, row in rows.items():
        flat = [label, row["seeds"]]
        for key in columns:
            flat += list(row[key]) if row.get(key) is not None else ["", ""]
        out.append(flat)
    return ["method", "seeds", *(f"{key}_{s}" for key in columns for s in ("mean", "std"))], out


def pyplot():
    """matplotlib's pyplot, drawing to files only (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_epochs(runs, methods, path, title):
    """Filtered valid NDCG@10 per post-training epoch of each of ``methods`` (mean over seeds), with
    BC's best epoch as a dashed line."""
    plt = pyplot()
    curves = {}
    for run in runs:
        if run.label in methods and run.results is not None and run.results["epoch_log"]:
            log = run.results["epoch_log"]
            curves.setdefault(run.label, []).append([e["valid_filtered"]["ndcg@10"] for e in log if "valid_filtered" in e])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, traces in curves.items():
        length = min(len(t) for t in traces)
        mean = np.mean([t[:length] for t in traces], axis=0)
        if label == "BC":
            ax.axhline(max(mean), color="grey", linestyle="--", label="BC (best epoch)")
        else:
            ax.plot(range(1, length + 1), mean, "o-", markersize=3, label=label)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("post-training epoch")
    ax.set_ylabel("valid NDCG@10 (rating >= threshold)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lambda_sweep(rows, lambdas, path, title):
    """Filtered test NDCG@10 (mean ± std over seeds) against λ on a log axis, BC as a dashed line."""
    plt = pyplot()
    points = [(lam, rows[f"ExpRSFT λ={lam:g}"]["ndcg@10"]) for lam in lambdas if f"ExpRSFT λ={lam:g}" in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points], fmt="o-",
                capsize=3, label="Exp-RSFT")
    if "BC" in rows:
        ax.axhline(rows["BC"]["ndcg@10"][0], color="grey", linestyle="--", label="BC")
    ax.set_xscale("log")
    ax.set_xticks([p[0] for p in points], [f"{p[0]:g}" for p in points])
    ax.minorticks_off()
    ax.set_xlabel("λ")
    ax.set_ylabel("test NDCG@10 (rating >= threshold)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reward_model_table(runs, dataset, output_dir, overrides):
    """Table 2 (MSE, MAE of the reward head and the naive predictors; mean ± std over the seeds' BC
    checkpoints) as (markdown, csv header, csv rows), or None without a finished BC."""
    checkpoints = [r.results["checkpoint"] for r in runs if r.label == "BC" and r.results is not None]
    if not checkpoints:
        return None
    errors = []
    for checkpoint in checkpoints:
        folder = output_dir / "diagnostics" / Path(checkpoint).stem
        errors.append(run_diagnostics(dataset, checkpoint, (), folder, overrides)["reward_model"])
    rows = {}
    for metric in ("MSE", "MAE"):
        rows[metric] = {name: mean_std([e[name][metric] for e in errors]) for name in PREDICTORS}
        rows[metric]["seeds"] = len(errors)
    header = ["metric", *(f"{name} {s}" for name in PREDICTORS for s in ("mean", "std"))]
    csv = [[metric, *(v for name in PREDICTORS for v in row[name])] for metric, row in rows.items()]
    columns = [(name, name) for name in PREDICTORS]
    return format_table(rows, columns, base=None, bold_best=False, first="Metric"), header, csv


def hardware():
    """One line: CPU model and cores, or the GPU; torch version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
        device = f"{os.cpu_count()}-core CPU {model}".strip()
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


def write_outputs(runs, args, methods, lambdas, output_dir, overrides, command, wall_seconds):
    """table.md, the CSV files and the plots from the finished runs."""
    filtered = aggregate(runs, "test_filtered")
    unfiltered = aggregate(runs, "test")
    if not filtered:
        raise AlignError("no run finished: nothing to tabulate (see the logs under runs/).")
    main_rows = {label: row for label, row in filtered.items() if "λ=" not in label}
    reward_columns = [("Avg Reward", "avg_reward")] if any(r["avg_reward"] for r in main_rows.values()) else []
    sample = next(r.results for r in runs if r.results is not None)
    seeds = sorted({r.seed for r in runs})
    parts = [
        f"# Benchmark: {args.dataset}, backbone {args.backbone}, seeds {seeds}",
        f"Test cases rated >= {sample['eval_rating_threshold']}: {sample['n_test_filtered']} of {sample['n_test']}. "
        f"Mean ± std over {len(seeds)} seed(s) of each run's best epoch (filtered valid NDCG@10); "
        f"% change from BC's mean; best mean per column in bold. Avg Reward: the seed's BC reward head scoring "
        f"the policy's samples." + (f" Baselines: RecBole's own training, at most {args.baseline_epochs} epochs."
                                    if any(r.model == r.label and r.model not in METHODS for r in runs) else ""),
        "## Table 3 (rating-filtered test cases)",
        format_table(main_rows, [*COLUMNS, *reward_columns]),
        "## Unfiltered test cases",
        format_table({k: v for k, v in unfiltered.items() if "λ=" not in k}, COLUMNS),
    ]
    header, rows = csv_rows(main_rows, [key for _, key in COLUMNS] + ["avg_reward"])
    write_table(output_dir / "table.csv", header, rows)
    write_table(output_dir / "unfiltered.csv", *csv_rows(unfiltered, [key for _, key in COLUMNS]))
    table2 = reward_model_table(runs, args.dataset, output_dir, overrides)
    if table2 is not None:
        parts += ["## Reward model vs naive rating predictors (Table 2, test ratings)", table2[0]]
        write_table(output_dir / "reward_model.csv", table2[1], table2[2])
    write_table(output_dir / "cost.csv", *csv_rows(filtered, COST_KEYS))
    parts += ["## Cost (means over seeds; ratio to BC)", cost_table(filtered)]
    plot_epochs(runs, methods, output_dir / "epochs.png", f"{args.dataset}, backbone {args.backbone}")
    parts.append("![per-epoch filtered valid NDCG@10](epochs.png)")
    if lambdas:
        plot_lambda_sweep(filtered, lambdas, output_dir / "lambda_sweep.png", f"Exp-RSFT λ sweep on {args.dataset}")
        sweep = {label: row for label, row in filtered.items() if label == "BC" or "λ=" in label}
        parts += ["## λ sweep (Figure 3)", format_table(sweep, COLUMNS), "![λ sweep](lambda_sweep.png)"]
    failed = [f"- {r.label}, seed {r.seed}: {r.error}" for r in runs if r.error]
    if failed:
        parts += ["## Failed runs (left out of the tables)", "\n".join(failed)]
    trained = sum(r.results["train_seconds"] for r in runs if r.results is not None)
    parts += [
        f"Hardware: {hardware()}. Training time of all runs: {trained:.0f} s; wall time of this invocation: "
        f"{wall_seconds:.0f} s (runs reused from an earlier invocation cost it nothing).",
        f"    {command}",
    ]
    (output_dir / "table.md").write_text("\n\n".join(parts) + "\n")
    return "\n\n".join(parts)


def run_benchmark(args, user_args):
    """Plan, run (resuming) and tabulate; returns the table.md text."""
    overrides = command_line_overrides(user_args)  # checked once, up front; passed verbatim to every run
    seeds = parse_list(args.seeds, "seeds", int)
    methods = parse_list(args.methods, "methods")
    baselines = parse_list(args.baselines, "baselines") if args.baselines.strip("[] ") else []
    lambdas = parse_lambdas(args.sweep_lambda, "--sweep_lambda") if args.sweep_lambda else []
    if any(m not in METHODS for m in methods):
        raise AlignError(f"--methods must be among {list(METHODS)}; got {methods}.")
    methods = ["BC", *(m for m in methods if m != "BC")]  # every method starts from its seed's BC
    fixed = {"seed", "backbone", "reward_head", "pretrained_checkpoint", "results_file", "checkpoint_file"}
    if lambdas:
        fixed.add("reward_lambda")
    if fixed & set(overrides):
        raise AlignError(f"the benchmark sets {sorted(fixed & set(overrides))} itself (use --seeds, --backbone ...).")
    config_files = [Path(f).resolve() for f in args.config_files.split()] if args.config_files else []
    output_dir = Path(args.output_dir or f"benchmark/{args.dataset}-{args.backbone}").resolve()
    for folder in ("runs", "checkpoints"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    if args.data_path:
        user_args = [*user_args, f"--data_path={Path(args.data_path).resolve()}"]
        overrides["data_path"] = str(Path(args.data_path).resolve())
    command = " ".join(["python -m recbole_align.benchmark", *sys.argv[1:]])

    runs = plan(seeds, methods, baselines, lambdas, args.backbone, args.bc_epochs, args.epochs, args.baseline_epochs)
    start, spent = time(), {}
    for index, run in enumerate(runs, 1):
        if run.model not in ("BC", *baselines):
            bc = next(r for r in runs if r.label == "BC" and r.seed == run.seed)
            if bc.results is None:
                run.error = f"its BC run failed ({bc.error})"
                print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: skipped, {run.error}", flush=True)
                continue
            run.settings["pretrained_checkpoint"] = bc.results["checkpoint"]
        seconds = execute(run, args.dataset, output_dir, config_files, user_args)
        if seconds:
            for key in {run.label, kind(run)}:
                spent.setdefault(key, []).append(seconds)
        elapsed = time() - start
        left = remaining_seconds(runs[index:], spent)
        status = (f"failed: {run.error}" if run.error else
                  f"test_filtered ndcg@10 {run.results['test_filtered']['ndcg@10']:.4f}"
                  + (" (reused)" if not seconds else f" in {seconds:.0f} s"))
        print(f"[{index}/{len(runs)}] {run.label} seed {run.seed}: {status}; elapsed {elapsed:.0f} s, "
              f"~{left:.0f} s left", flush=True)
    return write_outputs(runs, args, methods, lambdas, output_dir, overrides, command, time() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--seeds", default="[2020]", help='e.g. "[2020,2021,2022]"')
    parser.add_argument("--methods", default=f"[{','.join(METHODS)}]", help="BC and post-training methods")
    parser.add_argument("--baselines", default=f"[{','.join(BASELINES)}]", help='RecBole models; "[]" for none')
    parser.add_argument("--baseline_epochs", type=int, default=50, help="epoch budget of each baseline")
    parser.add_argument("--backbone", default="HSTU", help="HSTU or a RecBole sequential model (SASRec, GRU4Rec)")
    parser.add_argument("--bc_epochs", type=int, default=None, help="BC epoch budget (default: the backbone yaml's)")
    parser.add_argument("--epochs", type=int, default=None, help="post-training epochs (default: each method's yaml)")
    parser.add_argument("--sweep_lambda", default=None, help='Exp-RSFT λ values for Figure 3, e.g. "[0.25,0.5,1,2]"')
    parser.add_argument("--config_files", default=None, help="space-separated yaml files for every run")
    parser.add_argument("--output_dir", default=None, help="default: benchmark/<dataset>-<backbone>")
    args, rest = parser.parse_known_args(argv)
    try:
        print(run_benchmark(args, rest))
    except AlignError as error:
        print(f"recbole-align: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
