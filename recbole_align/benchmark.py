"""The experiment harness: the Exp-RSFT paper's comparison, with seeds, tuning, the λ sweep, RecBole
baselines, per-epoch traces, plots and costs (``recbole-align benchmark``; ``recbole-align sweep`` is
its λ sweep alone).

    python -m recbole_align.benchmark --dataset=ml-1m-half --data_path=../shared/data --seeds="[2020,2021,2022]"
    python -m recbole_align.benchmark --dataset=ml-100k --seeds="[2020,2021,2022]" --tune --baselines="[]"
    python -m recbole_align.benchmark --dataset=ml-100k --pretrained_checkpoint=saved/bc.pth --methods="[PPO]" --trace

For each seed: BC of the backbone (``--backbone``, default HSTU) is trained once, with the reward
head (or ``--pretrained_checkpoint`` is taken as every seed's BC, its row that checkpoint evaluated by
a 0-epoch run), and every post-training method starts from that checkpoint and trains for the fixed
budget of ``--epochs`` (30, the paper's; early stopping off); RSFT runs twice, on raw and on [0,
1]-rescaled ratings; ``--sweep_lambda`` adds an Exp-RSFT row per λ. With ``--tune``, every
post-training row first gets the same grid of 8 trials on the first seed (SHARED_GRID x its
METHOD_GRID key), chosen on the filtered valid NDCG@10, and every seed then runs at the choice. The
RecBole baselines train with RecBole's own pipeline for at most ``--baseline_epochs`` epochs. Every
run is a process of ``python -m recbole_align`` whose results JSON (and log) is kept under
``--output_dir``, named ``<run>-seed<seed>-<hash>.json`` where the hash covers the run's model,
dataset, config files and settings (and, through the BC checkpoint's name, BC's): rerunning the
command skips the runs whose JSON exists and continues an interrupted run from its last epoch, so an
interrupted benchmark resumes. A failed run is reported and left out of the tables.

Writes to ``--output_dir`` (tables and plots through :mod:`recbole_align.report`): ``table.md``
(Table 3 on the rating-filtered test cases at the final epoch of the budget and at the best
validation epoch, the unfiltered metrics, the reward model's Table 2, the cost table, the λ sweep,
the tuning trials and, with ``--trace``, every post-training run's per-epoch table; mean ± std over
seeds, % change from BC, best in bold), ``runs.csv`` (one row per run: every split's metrics at the
best and the final epoch, Avg Reward, costs), ``table.csv`` (best epoch), ``table_final.csv``,
``unfiltered.csv``, ``reward_model.csv``, ``cost.csv``, ``tuning.csv``, ``epochs.png`` (filtered
valid and test NDCG@10 per epoch of every method, the paper's Figure 2), ``baselines.png`` and
``lambda_sweep.png`` (Figure 3, final epoch). Any other ``--key=value`` is a config override for
every run; BC trains to its plateau (BC_PLATEAU), or exactly ``--bc_epochs``.
"""

import argparse
import ast
import hashlib
import itertools
import json
import os
import platform
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from time import time

import numpy as np
import pandas as pd
import torch

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import command_line_overrides, resolve_model
from recbole_align.data import EVAL_SPLITS, stale_inputs
from recbole_align.diagnostics import PREDICTORS, run_diagnostics
from recbole_align.errors import AlignError
from recbole_align.evaluator.paired import paired_difference, read_cases
from recbole_align.pretrained import read_pretrained
from recbole_align.report import (
    COLUMNS, COST_KEYS, cost_table, csv_rows, format_table, markdown_table, plot_against_lambda, plot_epochs, plot_noise_sweep,
    trace_table, write_records, write_table,
)
from recbole_align.trainer.align_trainer import last_state_file

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where the runs' processes import recbole_align from

METHODS = ("BC", "ContinuedBC", "ExpRSFT", "RSFT", "DRPO", "PPO", "DPO", "GRPO")
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec", "NARM", "Caser", "FPMC")


@dataclass
class Run:
    """One process of run_recbole_align.py: ``label`` is its row in the tables."""

    label: str
    model: str
    seed: int
    settings: dict  # config overrides set by the benchmark (the user's --key=value come on top)
    results: dict = field(default=None)
    error: str = None
    resumed: bool = False  # continued from the last validated epoch of an interrupted invocation
    results_file: Path = None


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


def parse_lambdas(text, name="--sweep_lambda"):
    """"[0.1, 0.5, 2]" -> [0.1, 0.5, 2] (sorted); every λ must be a number > 0, else an error naming
    the option ``name``."""
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        values = None
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values or not all(isinstance(v, Real) and not isinstance(v, bool) and v > 0 for v in values):
        raise AlignError(f"{name} must be a list of numbers > 0, e.g. \"[0.1,0.5,2]\"; got {text!r}.")
    return sorted(values)


def run_hash(run, dataset, config_files, user_args):
    """12 hex digits naming everything that decides a run's results (model, data, config, seed)."""
    files = {str(f): Path(f).read_text() for f in config_files}
    key = {"model": run.model, "dataset": dataset, "seed": run.seed, "settings": run.settings,
           "files": files, "args": sorted(user_args)}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def execute(run, dataset, output_dir, config_files, user_args):
    """Run ``run`` in its own process (or reuse its results JSON); returns the seconds it took (0 if reused)."""
    name = run.label.replace(" λ=", "-lambda").replace(" ", "-")
    stem = f"{name}-seed{run.seed}-{run_hash(run, dataset, config_files, user_args)}"
    results_file, log_file = output_dir / "runs" / f"{stem}.json", output_dir / "runs" / f"{stem}.log"
    run.settings["checkpoint_file"] = str(output_dir / "checkpoints" / f"{stem}.pth")
    run.results_file = results_file
    last_state = Path(last_state_file(run.settings["checkpoint_file"]))  # an interrupted run goes on from there
    if results_file.is_file():
        run.results = json.loads(results_file.read_text())
        if "inputs" not in run.results:  # written before runs recorded their inputs (2026-12-05): kept as it is
            return 0.0
        changes = stale_inputs(results_file)
        if not changes:
            return 0.0
        print(f"{run.label} seed {run.seed}: running again, {'; '.join(changes)}", flush=True)
        run.results = None
        results_file.unlink()
        last_state.unlink(missing_ok=True)  # its last state is the old data's finished training
    run.resumed = last_state.is_file()
    start = time()
    command = [
        sys.executable, "-m", "recbole_align", f"--model={run.model}", f"--dataset={dataset}",
        *([f"--config_files={' '.join(str(f) for f in config_files)}"] if config_files else []),
        *(f"--{key}={value}" for key, value in run.settings.items()), *user_args,
        f"--results_file={results_file}", *([f"--resume={last_state}"] if run.resumed else []),
        *([] if any(arg.startswith("--show_progress=") for arg in user_args) else ["--show_progress=False"]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))))}
    with open(log_file, "a" if run.resumed else "w") as log:
        process = subprocess.run(command, cwd=output_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if process.returncode == 0 and results_file.is_file():
        run.results = json.loads(results_file.read_text())
    else:
        lines = log_file.read_text().strip().splitlines() or ["no output"]
        run.error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
    return time() - start


VARIANTS = {  # rows beyond the method's own
    "RSFT": (("RSFT", {}), ("RSFT rescaled", {"rescale_rewards": True}), ("RSFT standardised", {"standardize_rewards": True})),
}
# rows run only when --methods names them: the analogue of the paper's Table 6 (trajectory rewards)
LABELLED_ROWS = (("ExpRSFT trajectory", "ExpRSFT", {"reward_scope": "trajectory"}),
                 ("RSFT trajectory", "RSFT", {"reward_scope": "trajectory"}))
SHARED_GRID = {"learning_rate": (1e-4, 1e-3), "dropout_prob": (0.0, 0.2)}
METHOD_GRID = {  # one key per method besides SHARED_GRID: 2 x 2 x 2 = 8 trials for every row
    "ContinuedBC": {"train_batch_size": (64, 128)},
    "ExpRSFT": {"reward_lambda": (0.5, 1.0)},
    "ExpRSFT trajectory": {"reward_lambda": (0.5, 1.0)},
    "RSFT trajectory": {"weight_normalization": ("mean", "sum")},
    "RSFT": {"weight_normalization": ("mean", "sum")},
    "RSFT rescaled": {"weight_normalization": ("mean", "sum")},
    "RSFT standardised": {"weight_normalization": ("mean", "sum")},
    "DRPO": {"drpo_keep_fraction": (0.25, 0.5)},
    "PPO": {"kl_coef": (0.01, 0.1)},
    "DPO": {"dpo_beta": (0.1, 0.5)},
    "GRPO": {"kl_coef": (0.01, 0.1)},
}


# beside Exp-RSFT's λ rows at each level of the reward-noise sweep: (label, model, settings); RSFT on
# rescaled ratings, as its raw weights w = r refuse the negative ratings that noise makes
NOISE_METHODS = (("RSFT rescaled", "RSFT", {"rescale_rewards": True}), ("DRPO", "DRPO", {}))


def noise_label(base, sigma):
    """The row of ``base`` (a method or "ExpRSFT λ=...") at noise std ``sigma``: σ = 0 is the plain row."""
    return f"{base} σ={sigma:g}" if sigma else base


def noise_rows(lambdas, noise_levels):
    """(label, model, settings) of the reward-noise sweep: at each σ, Exp-RSFT at every λ, RSFT and DRPO
    trained on ratings with N(0, σ²) noise (``reward_noise_std``); the σ = 0 rows are the plain ones."""
    rows = []
    for sigma in noise_levels:
        noise = {"reward_noise_std": sigma} if sigma else {}
        rows += [(noise_label(f"ExpRSFT λ={lam:g}", sigma), "ExpRSFT", {"reward_lambda": lam, **noise}) for lam in lambdas]
        rows += [(noise_label(label, sigma), m, {**settings, **noise}) for label, m, settings in NOISE_METHODS]
    return rows


def all_rows():
    """{label: (label, model, settings)} of every post-training row: each method's own, its VARIANTS and
    the LABELLED_ROWS."""
    rows = {label: (label, m, settings) for m in METHODS[1:] for label, settings in VARIANTS.get(m, ((m, {}),))}
    return {**rows, **{row[0]: row for row in LABELLED_ROWS}}


def method_rows(methods):
    """(label, model, settings) of the post-training rows of ``methods``: a method's name gives all its
    rows (RSFT on raw, [0, 1]-rescaled and standardised ratings), a row's label that row alone."""
    rows = all_rows()
    return [rows[label] for m in methods if m != "BC" for label in ([v for v, _ in VARIANTS[m]] if m in VARIANTS else [m])]


def grid(label):
    """The tuning trials of a row: every combination of SHARED_GRID and its METHOD_GRID keys."""
    space = {**SHARED_GRID, **METHOD_GRID[label]}
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]


def post_settings(backbone, seed, epochs):
    """What every post-training run of a seed gets: a fixed budget of ``epochs`` (early stopping off,
    so that the final epoch is the budget's, as the paper trains 30 epochs)."""
    return {"backbone": backbone, "seed": seed, "epochs": epochs, "stopping_step": epochs}


# BC's plateau rule: up to 200 epochs, stopped after 20 without a better NDCG@10 on ALL the valid cases
# (943 on ml-100k, against 202 rated >= 4.5, on which a patience of 10 stops on noise; BENCHMARKS 10)
BC_PLATEAU = {"epochs": 200, "stopping_step": 20, "valid_cases": "all"}


def bc_run(seed, backbone, bc_epochs, given=None):
    """The BC row of ``seed``: BC trained with the reward head, to its plateau (BC_PLATEAU) or, with
    ``bc_epochs``, for exactly that many epochs (its best epoch on all the valid cases kept); or, with
    ``given`` (a BC checkpoint and a post-training model to evaluate it with), that checkpoint
    evaluated by a 0-epoch run of the model."""
    if given is not None:
        checkpoint, model = given
        return Run("BC", model, seed, {"seed": seed, "pretrained_checkpoint": checkpoint, "epochs": 0})
    budget = BC_PLATEAU if bc_epochs is None else {**BC_PLATEAU, "epochs": bc_epochs, "stopping_step": bc_epochs}
    return Run("BC", "BC", seed, {"backbone": backbone, "reward_head": True, "seed": seed, **budget})


def bc_checkpoint_of(results):
    """The BC checkpoint of a BC row's results: the given one, else the one its run trained."""
    return results.get("pretrained_checkpoint") or results["checkpoint"]


def given_bc(checkpoint, methods):
    """(checkpoint, model) for :func:`bc_run`: the model is the first of ``methods`` that needs a reward
    head when the checkpoint has one (so that BC's row gets its Avg Reward), else the first method."""
    if not Path(checkpoint).is_file():
        raise AlignError(f"--pretrained_checkpoint [{checkpoint}] is not a file.")
    post = [all_rows().get(m, (m, m))[1] for m in methods if m != "BC"]
    if not post:
        raise AlignError("--pretrained_checkpoint needs a post-training method in --methods (or --sweep_lambda).")
    has_head = read_pretrained(checkpoint)["config"]["reward_head"]
    needs_head = [m for m in post if has_head and getattr(resolve_model(m).trainer_class, "requires_reward_head", False)]
    return str(Path(checkpoint).resolve()), (needs_head or post)[0]


def training_costs(checkpoint):
    """COST_KEYS of the run that trained ``checkpoint``, from the results JSON it wrote beside it (None
    each when there is none): a given BC checkpoint's costs, which its 0-epoch evaluation does not have."""
    trained = Path(checkpoint).with_suffix(".json")
    values = json.loads(trained.read_text()) if trained.is_file() else {}
    return {key: values.get(key) for key in COST_KEYS}


def parse_budgets(text, baselines):
    """``--baseline_epochs``: "N" (every baseline) or "Model:N,...,N" (a budget per model, N for the
    rest; RecBole's 300 when no bare N) -> {baseline: epochs}, or a clear error."""
    default, budgets = 300, {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, value = entry.rpartition(":")
        if not value.isdigit() or int(value) < 1 or (name and name not in baselines):
            raise AlignError(f"--baseline_epochs takes N or Model:N entries (N > 0, Model among --baselines {baselines}); "
                             f"got {entry!r}.")
        if name:
            budgets[name] = int(value)
        else:
            default = int(value)
    return {b: budgets.get(b, default) for b in baselines}


def plan(seeds, methods, baselines, lambdas, backbone, bc_epochs, epochs, baseline_epochs, tuned=None, given=None,
         noise_levels=()):
    """The runs of one benchmark, in order: per seed, BC, the methods (with ``tuned``: {label:
    settings} on top), the λ sweep, then the baselines (``baseline_epochs``: {baseline: budget}; RecBole's
    early stopping; ``given``: see :func:`bc_run`), the reward-noise sweep's rows not planned already
    (:func:`noise_rows`). A post-training run's ``pretrained_checkpoint`` is filled in once its seed's BC has run."""
    runs = []
    for seed in seeds:
        runs.append(bc_run(seed, backbone, bc_epochs, given))
        post = post_settings(backbone, seed, epochs)
        runs += [Run(label, m, seed, {**post, **settings, **(tuned or {}).get(label, {})})
                 for label, m, settings in method_rows(methods)]
        runs += [Run(f"ExpRSFT λ={lam:g}", "ExpRSFT", seed, {**post, "reward_lambda": lam}) for lam in lambdas]
        planned = {run.label for run in runs if run.seed == seed}
        runs += [Run(label, m, seed, {**post, **settings}) for label, m, settings in noise_rows(lambdas, noise_levels)
                 if label not in planned]
        runs += [Run(b, b, seed, {"seed": seed, "epochs": baseline_epochs[b]}) for b in baselines]
    return runs


def tuning_plan(seed, methods, backbone, bc_epochs, epochs, given=None):
    """BC of ``seed`` and, for every post-training row, its grid's trials (same number each)."""
    runs = [bc_run(seed, backbone, bc_epochs, given)]
    post = post_settings(backbone, seed, epochs)
    for label, m, settings in method_rows(methods):
        runs += [Run(label, m, seed, {**post, **settings, **trial}) for trial in grid(label)]
    return runs


def tuning_choice(trials):
    """{label: the settings of its trial with the highest filtered valid NDCG@10 (at its best epoch)}
    among the finished ``trials`` (the first on ties)."""
    chosen = {}
    for label in dict.fromkeys(t.label for t in trials if t.label != "BC"):
        finished = [t for t in trials if t.label == label and t.results is not None]
        if finished:
            best = max(finished, key=lambda t: t.results["valid_filtered"]["ndcg@10"])
            chosen[label] = {key: best.settings[key] for key in grid(label)[0]}
    return chosen


def tuning_table(trials, chosen):
    """(markdown, csv header, csv rows): every trial's settings and filtered valid NDCG@10 at its
    best and its final epoch, the chosen one marked."""
    header = ["Method", "trial", "valid NDCG@10 (best epoch)", "best epoch", "valid NDCG@10 (final epoch)", "chosen"]
    rows = []
    for trial in trials:
        if trial.label == "BC" or trial.results is None:
            continue
        keys = grid(trial.label)[0]
        setting = ", ".join(f"{key}={trial.settings[key]}" for key in keys)
        log = trial.results["epoch_log"]
        final = log[-1]["valid_filtered"]["ndcg@10"] if log and "valid_filtered" in log[-1] else None
        is_chosen = chosen.get(trial.label) == {key: trial.settings[key] for key in keys}
        rows.append([trial.label, setting, trial.results["valid_filtered"]["ndcg@10"], trial.results["best_epoch"],
                     final if final is not None else "n/a", "yes" if is_chosen else ""])
    return markdown_table(header, rows), header, rows


def kind(run):
    """BC, post-training (methods and the λ sweep) or baseline: runs of one kind cost alike."""
    return "BC" if run.label == "BC" else "post" if run.model in METHODS else "baseline"


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


def metrics_at(results, split, view):
    """The metrics of ``split`` at the run's best epoch (``view`` "best": its saved checkpoint, model
    selection on the filtered valid cases) or at the last epoch of its budget ("final"; from the
    per-epoch log, or the best epoch's when that was the last); None when the run did not log them."""
    if view == "best":
        return results[split]
    last = results["epoch_log"][-1] if results["epoch_log"] else {}
    if split in last:
        return last[split]
    return results[split] if last and last["epoch"] == results["best_epoch"] else None


def aggregate(runs, split, view="best"):
    """{label: {column: (mean, std)}} over seeds of the finished runs: the metrics of ``split`` at
    ``view`` (:func:`metrics_at`), the epoch they come from, Avg Reward (best view only: it is
    measured on the saved checkpoint) and the costs."""
    by_label = {}
    for run in runs:
        if run.results is not None:
            by_label.setdefault(run.label, []).append(run.results)
    table = {}
    for label, results in by_label.items():
        at = [metrics_at(r, split, view) for r in results]
        row = {key: mean_std([m[key] if m is not None else None for m in at]) for _, key in COLUMNS}
        row["epoch"] = mean_std([r["epoch_log"][-1]["epoch"] if view == "final" and r["epoch_log"] else r["best_epoch"]
                                  for r in results])
        row["avg_reward"] = mean_std([r.get("avg_reward") for r in results]) if view == "best" else None
        for key in COST_KEYS:
            row[key] = mean_std([r[key] for r in results])
        row["stopped_early"] = sum(r["epochs_run"] is not None and r["epochs_run"] < r["config"]["epochs"] for r in results)
        row["seeds"] = len(results)
        table[label] = row
    return table


def result_row(results):
    """A flat row of a results dict: ``<split>/<metric>`` for every split (best epoch), the best and final
    epoch, ``final_valid_filtered/<metric>``, ``final_test_filtered/<metric>`` (when logged), Avg Reward
    and the costs."""
    row = {f"{split}/{metric}": value for split in EVAL_SPLITS for metric, value in results[split].items()}
    log = results["epoch_log"]
    row["best_epoch"] = results["best_epoch"]
    row["final_epoch"] = log[-1]["epoch"] if log else None
    for split in ("valid_filtered", "test_filtered"):
        final = metrics_at(results, split, "final") or {}
        row.update({f"final_{split}/{metric}": final.get(metric) for metric in results[split]})
    row["avg_reward"] = results.get("avg_reward")
    row.update({key: results[key] for key in COST_KEYS})
    return row


def run_record(run):
    """One row of runs.csv: the run's label, model, seed, settings of the benchmark and result_row."""
    settings = {key: value for key, value in run.settings.items() if key not in ("seed", "checkpoint_file", "pretrained_checkpoint")}
    return {"run": run.label, "model": run.model, "seed": run.seed, **settings, **result_row(run.results),
            "results_file": str(run.results_file), "checkpoint": run.results["checkpoint"]}


def reward_model_table(runs, dataset, output_dir, overrides):
    """Table 2 (MSE, MAE of the reward head and the naive predictors; mean ± std over the seeds' BC
    checkpoints) as (markdown, csv header, csv rows), or None without a finished BC."""
    checkpoints = dict.fromkeys(bc_checkpoint_of(r.results) for r in runs if r.label == "BC" and r.results is not None)
    checkpoints = [c for c in checkpoints if Path(c).is_file()]  # a reused BC JSON may outlive its checkpoint
    checkpoints = [c for c in checkpoints if read_pretrained(c)["config"]["reward_head"]]
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


def noise_section(runs, lambdas, noise_levels, output_dir, dataset):
    """The reward-noise sweep (Theorem 4.4's robustness-improvement trade-off of λ): per view (final
    epoch, best validation epoch) a table of filtered test NDCG@10 (mean ± std over seeds) per row
    (Exp-RSFT at each λ, RSFT, DRPO) and noise std σ, with the λ that the filtered test and valid
    NDCG@10 pick at each σ; writes noise_sweep.csv and noise_sweep.png (final epoch). Returns the
    markdown parts."""
    bases = [*(f"ExpRSFT λ={lam:g}" for lam in lambdas), *(label for label, _, _ in NOISE_METHODS)]
    scores = {(view, split): aggregate(runs, split, view) for view in ("final", "best")
              for split in ("test_filtered", "valid_filtered")}

    def ndcg(view, split, base, sigma):
        row = scores[view, split].get(noise_label(base, sigma))
        return row["ndcg@10"] if row else None

    def picked_lambda(view, split, sigma):
        scored = [(ndcg(view, split, f"ExpRSFT λ={lam:g}", sigma)[0], lam) for lam in lambdas
                  if ndcg(view, split, f"ExpRSFT λ={lam:g}", sigma)]
        return max(scored)[1] if scored else None

    parts, records = [], []
    for view, heading in (("final", "at the final epoch of the budget"), ("best", "at the best validation epoch")):
        lines = [[base, *(f"{c[0]:.4f} ± {c[1]:.4f}" if c else "n/a"
                          for c in (ndcg(view, "test_filtered", base, sigma) for sigma in noise_levels))] for base in bases]
        for split in ("test_filtered", "valid_filtered"):
            picks = (picked_lambda(view, split, sigma) for sigma in noise_levels)
            lines.append([f"λ picked by {split.split('_')[0]} NDCG@10", *("n/a" if lam is None else f"{lam:g}" for lam in picks)])
        parts += [f"## Reward noise: filtered test NDCG@10 {heading}",
                  markdown_table(["Row", *(f"σ={sigma:g}" for sigma in noise_levels)], lines)]
        records += [{"view": view, "sigma": sigma, "row": base, "seeds": scores[view, "test_filtered"][noise_label(base, sigma)]["seeds"],
                     **{f"{split}/ndcg@10_{stat}": value for split in ("test_filtered", "valid_filtered")
                        for stat, value in zip(("mean", "std"), ndcg(view, split, base, sigma))}}
                    for base in bases for sigma in noise_levels if ndcg(view, "test_filtered", base, sigma)]
    write_records(output_dir / "noise_sweep.csv", records)

    curves = {f"σ={sigma:g}": [(lam, ndcg("final", "test_filtered", f"ExpRSFT λ={lam:g}", sigma)) for lam in lambdas
                               if ndcg("final", "test_filtered", f"ExpRSFT λ={lam:g}", sigma)] for sigma in noise_levels}
    picked = {sigma: picked_lambda("final", "valid_filtered", sigma) for sigma in noise_levels}
    against_noise = {"Exp-RSFT, λ picked on valid": [
        (sigma, ndcg("final", "test_filtered", f"ExpRSFT λ={lam:g}", sigma)) for sigma, lam in picked.items() if lam is not None]}
    against_noise.update({m: [(sigma, ndcg("final", "test_filtered", m, sigma)) for sigma in noise_levels
                              if ndcg("final", "test_filtered", m, sigma)] for m, _, _ in NOISE_METHODS})
    bc = scores["best", "test_filtered"].get("BC", {}).get("ndcg@10")
    plot_noise_sweep(curves, against_noise, output_dir / "noise_sweep.png",
                     f"{dataset}: training ratings + N(0, σ²) noise (final epoch)", bc)
    return [*parts, "![reward-noise sweep: NDCG@10 against λ per σ, and against σ](noise_sweep.png)"]


def hardware():
    """One line: CPU model and cores, or the GPU; torch version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
        device = f"{os.cpu_count()}-core CPU {model}".strip()
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


REWARD_MODEL_NOTE = (
    "What the reward model sees: r̂(s, a) is the reward head on the BC backbone's state at the case; with HSTU "
    "that state is conditioned on the held-out item's timestamp (HSTU's target-aware time encoding, as the "
    "reference code); the user, item and global means are not given it. The head's offset is the mean of "
    "all training ratings, so at initialisation it is the Global Mean predictor."
)


def table3(runs, split, view, labels):
    """Table 3 rows of ``split`` at ``view`` (without the λ sweep), with the epoch column; BC's row is
    always its best epoch, the checkpoint that every method starts from."""
    rows = {**aggregate(runs, split, view), **{k: v for k, v in aggregate(runs, split).items() if k == "BC"}}
    return {label: rows[label] for label in labels if label in rows}


def write_outputs(runs, args, labels, lambdas, output_dir, overrides, command, wall_seconds, tuning=None,
                  noise_levels=()):
    """table.md, the CSV files and the plots from the finished runs; ``tuning``: (trials, chosen)."""
    best = table3(runs, "test_filtered", "best", labels)
    if not best:
        raise AlignError("no run finished: nothing to tabulate (see the logs under runs/).")
    final = table3(runs, "test_filtered", "final", labels)
    reward_columns = [("Avg Reward", "avg_reward")] if any(r["avg_reward"] for r in best.values()) else []
    epoch_column = [("epoch", "epoch")]
    sample = next(r.results for r in runs if r.results is not None)
    seeds = sorted({r.seed for r in runs})
    budget = f"{args.epochs} post-training epochs (no early stopping), " + (
        f"BC the given checkpoint {args.pretrained_checkpoint}" if args.pretrained_checkpoint
        else f"BC {args.bc_epochs} epochs" if args.bc_epochs is not None
        else f"BC to its plateau (at most {BC_PLATEAU['epochs']} epochs, stopped after {BC_PLATEAU['stopping_step']} "
             f"without a better NDCG@10 on all the valid cases)")
    parts = [
        f"# Benchmark: {args.dataset}, backbone {args.backbone}, seeds {seeds}",
        f"Test cases rated >= {sample['eval_rating_threshold']}: {sample['n_test_filtered']} of {sample['n_test']}. "
        f"Budget: {budget}. Mean ± std over {len(seeds)} seed(s); % change from BC's mean; best mean per column "
        f"in bold; `epoch`: the (0-based) epoch the metrics come from. Avg Reward: the seed's BC reward head "
        f"scoring the policy's samples (saved checkpoint)."
        + (f" Baselines: RecBole's own training and early stopping, budget (epochs) {args.baseline_epochs}."
           if any(r.model == r.label and kind(r) == "baseline" for r in runs) else ""),
        "## Table 3 at the final epoch of the budget (rating-filtered test cases)",
        "The paper's view: every method trained for the fixed budget. BC: its best epoch (the starting checkpoint).",
        format_table(final, [*COLUMNS, *epoch_column]),
        "## Table 3 at the best validation epoch (rating-filtered test cases)",
        "Model selection: each run's checkpoint with the best filtered valid NDCG@10.",
        format_table(best, [*COLUMNS, *reward_columns, *epoch_column]),
        "## Unfiltered test cases (best validation epoch)",
        format_table(table3(runs, "test", "best", labels), COLUMNS),
        "## Unfiltered test cases (final epoch)",
        format_table(table3(runs, "test", "final", labels), COLUMNS),
    ]
    keys = [key for _, key in COLUMNS]
    write_table(output_dir / "table.csv", *csv_rows(best, [*keys, "avg_reward", "epoch"]))
    write_table(output_dir / "table_final.csv", *csv_rows(final, [*keys, "epoch"]))
    write_table(output_dir / "unfiltered.csv", *csv_rows(aggregate(runs, "test"), keys))
    table2 = reward_model_table(runs, args.dataset, output_dir, overrides)
    if table2 is not None:
        parts += ["## Reward model vs naive rating predictors (Table 2, test ratings)", REWARD_MODEL_NOTE, table2[0]]
        write_table(output_dir / "reward_model.csv", table2[1], table2[2])
    else:
        parts.append("Table 2 (reward model) not computed: no BC checkpoint of these runs with a reward head is on "
                     "disk (any more).")
    for view, title in (("final", "the final epoch of the budget"), ("best", "the best validation epoch")):
        paired = paired_tables(runs, labels, view)
        if paired is None:
            continue
        parts += [f"## Paired differences at {title} (rating-filtered test cases)",
                  f"The paired bootstrap over the {sample['n_test_filtered']} cases (10,000 resamples; per case, the "
                  f"difference averaged over the seeds both rows finished): mean difference A - B, % of B, and its 95% "
                  f"interval; * marks an interval that excludes 0. BC at its best epoch, the starting checkpoint.",
                  paired[0]]
        write_records(output_dir / f"paired_{view}.csv", paired[1])
    costs = aggregate(runs, "test_filtered")
    write_table(output_dir / "cost.csv", *csv_rows(costs, COST_KEYS))
    parts += ["## Cost (means over seeds; ratio to BC)", cost_table(costs)]
    baselines = [label for label in labels if any(r.label == label and kind(r) == "baseline" for r in runs)]
    plot_epochs(runs, [label for label in labels if label not in baselines], output_dir / "epochs.png",
                f"{args.dataset}, backbone {args.backbone}")
    parts.append("![per-epoch filtered valid and test NDCG@10 (Figure 2)](epochs.png)")
    if baselines:
        plot_epochs(runs, ["BC", *baselines], output_dir / "baselines.png", f"{args.dataset}: training curves",
                    xlabel="training epoch", curve_of_bc=True)
        parts.append("![per-epoch filtered valid and test NDCG@10 of BC and the baselines](baselines.png)")
    if lambdas:
        sweep = {view: {**{k: v for k, v in best.items() if k == "BC"},
                        **{k: v for k, v in aggregate(runs, "test_filtered", view).items() if "λ=" in k and "σ=" not in k}}
                 for view in ("final", "best")}
        points = [(lam, sweep["final"][f"ExpRSFT λ={lam:g}"]["ndcg@10"]) for lam in lambdas
                  if f"ExpRSFT λ={lam:g}" in sweep["final"]]
        plot_against_lambda({"Exp-RSFT": points}, output_dir / "lambda_sweep.png",
                            f"Exp-RSFT λ sweep on {args.dataset} (final epoch)", sweep["final"].get("BC", {}).get("ndcg@10"))
        parts += ["## λ sweep (Figure 3), final epoch", format_table(sweep["final"], [*COLUMNS, *epoch_column]),
                  "![λ sweep](lambda_sweep.png)", "## λ sweep, best validation epoch",
                  format_table(sweep["best"], [*COLUMNS, *epoch_column])]
    if noise_levels:
        parts += noise_section(runs, lambdas, noise_levels, output_dir, args.dataset)
    trials = []
    if tuning is not None:
        trials, chosen = tuning
        markdown, header, rows = tuning_table(trials, chosen)
        write_table(output_dir / "tuning.csv", header, rows)
        untuned = [label for label in dict.fromkeys(t.label for t in trials if t.label != "BC") if label not in chosen]
        parts += [f"## Tuning (seed {seeds[0]}: {len(grid(next(iter(METHOD_GRID))))} trials per method, the same grid "
                  f"shape for all: {', '.join(f'{k} {v}' for k, v in SHARED_GRID.items())} and one key of the method; "
                  f"chosen on the filtered valid NDCG@10 at the best epoch)", markdown]
        if untuned:
            parts.append(f"No trial finished for {', '.join(untuned)}: those rows ran at their yaml defaults.")
    failed = [f"- {r.label}, seed {r.seed}{tag}: {r.error}"
              for group, tag in ((trials, " (tuning trial)"), (runs, "")) for r in group if r.error]
    if failed:
        parts += ["## Failed runs (left out of the tables)", "\n".join(failed)]
    if args.trace:
        parts += ["## Per-epoch traces (filtered valid NDCG@10 and what each trainer logs)",
                  *(trace_table(r.label, r.seed, r.results) for r in runs
                    if r.results is not None and r.label != "BC" and kind(r) == "post")]
    write_records(output_dir / "runs.csv", [run_record(r) for r in runs if r.results is not None])
    trained = sum(r.results["train_seconds"] or 0 for r in runs if r.results is not None)
    parts += [
        f"Hardware: {hardware()}. Training time of all runs: {trained:.0f} s; wall time of this invocation: "
        f"{wall_seconds:.0f} s (runs reused from an earlier invocation cost it nothing).",
        f"    {command}",
    ]
    (output_dir / "table.md").write_text("\n\n".join(parts) + "\n")
    return "\n\n".join(parts)


def comparisons(labels):
    """The paired comparisons (A, B): every post-training row against BC and against the ContinuedBC
    control, and Exp-RSFT against every RSFT row."""
    post = [label for label in labels if label not in ("BC",)]
    pairs = [(label, "BC") for label in post]
    if "ContinuedBC" in labels:
        pairs += [(label, "ContinuedBC") for label in post if label != "ContinuedBC"]
    pairs += [(a, b) for a in labels if a.startswith("ExpRSFT") for b in labels if b.startswith("RSFT")]
    return pairs


def paired_tables(runs, labels, view, metrics=("ndcg@10", "hit@10")):
    """(markdown, records) of the paired bootstrap comparisons (:func:`comparisons`) on the rating-filtered
    test cases at ``view`` (``final`` or ``best``; BC always at its best epoch, the starting checkpoint):
    the difference of the seeds' mean per case and its 95% interval, pooled over the seeds that both
    rows finished, and per seed; None when no run wrote per-case results."""
    cases = {(r.label, r.seed): r.results.get("cases_file") for r in runs if r.results is not None}
    cases = {key: path for key, path in cases.items() if path and Path(path).is_file()}
    rows, records = [], []
    for a, b in comparisons(labels):
        seeds = sorted(seed for label, seed in cases if label == a and (b, seed) in cases)
        if not seeds:
            continue
        ranks = {label: [read_cases(cases[label, seed], view="best" if label == "BC" else view) for seed in seeds]
                 for label in (a, b)}
        for metric in metrics:
            pooled = paired_difference(ranks[a], ranks[b], metric)
            per_seed = [paired_difference([x], [y], metric) for x, y in zip(ranks[a], ranks[b])]
            records += [{"a": a, "b": b, "metric": metric, "seed": seed, **result}
                        for seed, result in [("pooled", pooled), *zip(seeds, per_seed)]]
            rows.append({
                "A vs B": f"{a} vs {b}", "metric": metric, "A": f"{pooled['mean_a']:.4f}", "B": f"{pooled['mean_b']:.4f}",
                "difference": f"{pooled['difference']:+.4f} ({100 * pooled['relative']:+.1f}%)",
                "95% CI": f"[{pooled['low']:+.4f}, {pooled['high']:+.4f}]" + (" *" if pooled["significant"] else ""),
                "per seed": "; ".join(f"{r['difference']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}]" + (" *" if r["significant"] else "")
                                      for r in per_seed),
            })
    if not rows:
        return None
    return pd.DataFrame(rows).to_markdown(index=False), records


def execute_all(runs, baselines, dataset, output_dir, config_files, user_args, stage="", jobs=1):
    """Run ``runs``, ``jobs`` processes at a time: the BC runs and the baselines first, then every
    post-training run from its seed's BC; printing progress."""
    start, spent, done, lock = time(), {}, [0], threading.Lock()

    def one(run):
        if run.label != "BC" and run.model not in baselines:
            bc = next(r for r in runs if r.label == "BC" and r.seed == run.seed)
            if bc.results is None:
                run.error = f"its BC run failed ({bc.error})"
                with lock:
                    done[0] += 1
                    print(f"{stage}[{done[0]}/{len(runs)}] {run.label} seed {run.seed}: skipped, {run.error}", flush=True)
                return
            run.settings["pretrained_checkpoint"] = bc_checkpoint_of(bc.results)
        seconds = execute(run, dataset, output_dir, config_files, user_args)
        if run.label == "BC" and run.model != "BC" and run.results is not None:
            run.results.update(training_costs(run.results["pretrained_checkpoint"]))
        with lock:
            done[0] += 1
            if seconds:
                for key in {run.label, kind(run)}:
                    spent.setdefault(key, []).append(seconds)
            left = remaining_seconds([r for r in runs if r.results is None and r.error is None], spent) / jobs
            status = (f"failed: {run.error}" if run.error else
                      f"test_filtered ndcg@10 {run.results['test_filtered']['ndcg@10']:.4f}"
                      + (" (reused)" if not seconds else f" in {seconds:.0f} s" + (" (resumed)" if run.resumed else "")))
            print(f"{stage}[{done[0]}/{len(runs)}] {run.label} seed {run.seed}: {status}; elapsed {time() - start:.0f} s, "
                  f"~{left:.0f} s left", flush=True)

    first = [run for run in runs if run.label == "BC" or run.model in baselines]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for group in (first, [run for run in runs if not any(run is f for f in first)]):
            list(pool.map(one, group))


def run_benchmark(args, user_args):
    """Plan, (tune,) run (resuming) and tabulate; returns the table.md text."""
    overrides = command_line_overrides(user_args)  # checked once, up front; passed verbatim to every run
    seeds = parse_list(args.seeds, "seeds", int)
    methods = parse_list(args.methods, "methods")
    baselines = parse_list(args.baselines, "baselines") if args.baselines.strip("[] ") else []
    baseline_epochs = parse_budgets(args.baseline_epochs, baselines)
    lambdas = parse_lambdas(args.sweep_lambda, "--sweep_lambda") if args.sweep_lambda else []
    noise_levels = sorted(parse_list(args.noise_sweep, "noise_sweep", float)) if args.noise_sweep else []
    if any(not sigma >= 0 for sigma in noise_levels):
        raise AlignError(f"--noise_sweep takes noise stds >= 0, e.g. \"[0,0.5,1]\"; got {args.noise_sweep!r}.")
    if noise_levels and not lambdas:
        raise AlignError("--noise_sweep runs Exp-RSFT at every λ of --sweep_lambda at each noise level: give --sweep_lambda.")
    if any(m not in METHODS and m not in all_rows() for m in methods):
        raise AlignError(f"--methods must be among {list(METHODS)} or rows {list(all_rows())}; got {methods}.")
    if args.epochs < 1:
        raise AlignError(f"--epochs must be a positive integer; got {args.epochs}.")
    methods = ["BC", *(m for m in methods if m != "BC")]  # every method starts from its seed's BC
    fixed = {"seed", "backbone", "reward_head", "pretrained_checkpoint", "results_file", "checkpoint_file",
             "stopping_step", "valid_cases"}
    if lambdas:
        fixed.add("reward_lambda")
    if noise_levels:
        fixed.add("reward_noise_std")
    if args.tune:
        fixed |= {key for label, _, _ in method_rows(methods) for key in grid(label)[0]}
    if fixed & set(overrides):
        raise AlignError(f"the benchmark sets {sorted(fixed & set(overrides))} itself (use --seeds, --backbone ...).")
    config_files = [Path(f).resolve() for f in args.config_files.split()] if args.config_files else []
    output_dir = Path(args.output_dir or f"benchmark/{args.dataset}-{args.backbone}").resolve()
    for folder in ("runs", "checkpoints"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    if args.data_path:
        user_args = [*user_args, f"--data_path={Path(args.data_path).resolve()}"]
        overrides["data_path"] = str(Path(args.data_path).resolve())
    command = " ".join(["python -m recbole_align.benchmark", *args.command_line])
    given = None
    if args.pretrained_checkpoint:
        if args.bc_epochs is not None:
            raise AlignError("--bc_epochs sets the budget of BC's training; with --pretrained_checkpoint none is trained.")
        given = given_bc(args.pretrained_checkpoint, [*methods, *(["ExpRSFT"] if lambdas else [])])

    start, tuning, chosen = time(), None, None
    if args.tune:
        trials = tuning_plan(seeds[0], methods, args.backbone, args.bc_epochs, args.epochs, given)
        execute_all(trials, baselines, args.dataset, output_dir, config_files, user_args, "tuning ", args.jobs)
        chosen = tuning_choice(trials)
        tuning = (trials, chosen)
    runs = plan(seeds, methods, baselines, lambdas, args.backbone, args.bc_epochs, args.epochs, baseline_epochs, chosen,
                given, noise_levels)
    execute_all(runs, baselines, args.dataset, output_dir, config_files, user_args, jobs=args.jobs)  # tuning's: reused
    labels = ["BC", *(label for label, _, _ in method_rows(methods)), *baselines]
    return write_outputs(runs, args, labels, lambdas, output_dir, overrides, command, time() - start, tuning,
                         noise_levels)


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--seeds", default="[2020]", help='e.g. "[2020,2021,2022]"')
    parser.add_argument("--methods", default=f"[{','.join(METHODS)}]", help="BC and post-training methods")
    parser.add_argument("--baselines", default=f"[{','.join(BASELINES)}]", help='RecBole models; "[]" for none')
    parser.add_argument("--baseline_epochs", default="300",
                        help='epoch budget of the baselines: N, or per model "SASRec:5,300" (RecBole\'s 300 by default; '
                             "early stopping after stopping_step, RecBole's 10, epochs without improvement)")
    parser.add_argument("--backbone", default="HSTU", help="HSTU or a RecBole sequential model (SASRec, GRU4Rec)")
    parser.add_argument("--bc_epochs", type=int, default=None,
                        help="BC trained exactly this many epochs (default: to its plateau, see BC_PLATEAU)")
    parser.add_argument("--epochs", type=int, default=30, help="post-training epochs, a fixed budget (the paper's 30)")
    parser.add_argument("--tune", action="store_true",
                        help="first tune every method on the first seed (8 trials each), then run all seeds at the choice")
    parser.add_argument("--sweep_lambda", default=None, help='Exp-RSFT λ values for Figure 3, e.g. "[0.25,0.5,1,2]"')
    parser.add_argument("--noise_sweep", default=None,
                        help='noise stds σ, e.g. "[0,0.5,1,2]": Exp-RSFT at every --sweep_lambda λ, RSFT and DRPO at each σ, '
                             "trained on ratings + N(0, σ²) (reward_noise_std)")
    parser.add_argument("--pretrained_checkpoint", default=None,
                        help="a BC checkpoint every method starts from, instead of training BC per seed")
    parser.add_argument("--trace", action="store_true",
                        help="add every post-training run's per-epoch table (valid metric and trainer statistics)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files for every run")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each its own process; BC runs first, then the methods from them)")
    parser.add_argument("--output_dir", default=None, help="default: benchmark/<dataset>-<backbone>")
    args, _ = parse_command_line(parser, argv)
    print(run_benchmark(args, args.override_args))


if __name__ == "__main__":
    main()
