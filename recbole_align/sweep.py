"""λ sweep: one post-training run per λ, all from one BC checkpoint (the Exp-RSFT paper's Figure 3).

    python -m recbole_align.sweep --model=ExpRSFT --dataset=ml-1m-half --data_path=../shared/data \\
        --reward_lambda_values="[0.1,0.25,0.5,1,2,5]"

The BC checkpoint is ``--pretrained_checkpoint`` or the BC stage's (trained once, then reused). Each
run goes through :func:`recbole_align.quick_start.run_recbole_align` and writes its results JSON to
``<output_dir>/<model>-lambda<λ>.json``; a JSON already there is reused, so an interrupted sweep
resumes. The BC reference is the checkpoint evaluated by a 0-epoch run (``BC.json``). From those
JSON files the sweep writes ``<output_dir>/sweep.csv`` (one row for BC and one per λ: every
unfiltered and rating-filtered metric of the best epoch, the best and the final epoch and the final
epoch's filtered valid metrics) and ``sweep.png`` (filtered test ndcg@10, hit@10 and mrr against λ
on a log axis, BC as a dashed line), and ``--results_file`` (default ``<output_dir>/sweep.json``)
with the same rows. Any other ``--key=value`` is a config override for every run, BC included.
"""

import argparse
import ast
import csv
import json
from numbers import Real
from pathlib import Path
from time import time

from recbole_align.errors import AlignError
from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import build_config
from recbole_align.data import EVAL_SPLITS
from recbole_align.quick_start import behaviour_cloning_stage, run_recbole_align

PLOT_METRICS = ("ndcg@10", "hit@10", "mrr")
PLOT_SPLIT = "test_filtered"


def parse_lambdas(text, name="reward_lambda_values"):
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


def bc_checkpoint(config, config_files=None, config_dict=None):
    """The BC checkpoint that runs of ``config`` (from build_config) start from: its
    ``pretrained_checkpoint`` if set, else the BC stage's (trained by a nested run, or reused when
    one with the same BC config exists)."""
    return config["pretrained_checkpoint"] or behaviour_cloning_stage(config, config_files, config_dict)


def run_once(results_file, model, dataset, config_files=None, config_dict=None):
    """The results JSON of a run_recbole_align run written to ``results_file``, reusing the file when
    an earlier run already wrote it."""
    path = Path(results_file)
    if not path.is_file():
        run_recbole_align(model, dataset, config_files, {**(config_dict or {}), "results_file": str(path)})
    return json.loads(path.read_text())


def result_row(results):
    """A flat row of a results dict: ``<split>/<metric>`` for every split, the best and final epoch,
    ``final_valid_filtered/<metric>`` and seconds per epoch."""
    row = {f"{split}/{metric}": value for split in EVAL_SPLITS for metric, value in results[split].items()}
    log = results["epoch_log"]
    row["best_epoch"] = results["best_epoch"]
    row["final_epoch"] = log[-1]["epoch"] if log else None
    final = log[-1].get("valid_filtered", {}) if log else {}
    row.update({f"final_valid_filtered/{metric}": final.get(metric) for metric in results["valid_filtered"]})
    row["seconds_per_epoch"] = results["seconds_per_epoch"]
    return row


def write_csv(rows, path):
    """Rows (dicts) as CSV; columns in first-seen order, blank where a row has no value."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_sweep(bc_row, rows, path, title):
    """PLOT_METRICS of PLOT_SPLIT against λ (log axis), one panel each, with BC as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = [row["reward_lambda"] for row in rows]
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(4 * len(PLOT_METRICS), 3.4))
    for ax, metric in zip(axes, PLOT_METRICS):
        key = f"{PLOT_SPLIT}/{metric}"
        ax.plot(lambdas, [row[key] for row in rows], "o-", label=rows[0]["run"])
        ax.axhline(bc_row[key], color="grey", linestyle="--", label="BC")
        ax.set_xscale("log")
        ax.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas], minor=False)
        ax.minorticks_off()
        ax.set_xlabel("λ")
        ax.set_title(metric)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_sweep(model, dataset, lambdas, output_dir, config_files=None, config_dict=None):
    """Post-train ``model`` once per λ from one BC checkpoint; write sweep.csv and sweep.png under
    ``output_dir`` and return {"bc_checkpoint", "csv", "png", "rows"} (BC's row first)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_dict = dict(config_dict or {})
    config, _ = build_config(model, dataset, config_files, config_dict)
    if config["reward_lambda"] is None:
        raise AlignError(f"[{model}] has no reward_lambda to sweep (sweep a model with reward_weighting: exp).")
    checkpoint = bc_checkpoint(config, config_files, config_dict)
    start_dict = {**config_dict, "pretrained_checkpoint": checkpoint}
    bc = run_once(output_dir / "BC.json", model, dataset, config_files, {**start_dict, "epochs": 0})
    bc_row = {"run": "BC", "reward_lambda": None, **result_row(bc), "results_file": str(output_dir / "BC.json")}
    bc_score = bc_row[f"{PLOT_SPLIT}/{PLOT_METRICS[0]}"]
    print(f"BC ({checkpoint}): {PLOT_SPLIT} {PLOT_METRICS[0]} {bc_score:.4f}", flush=True)
    rows = []
    for index, lam in enumerate(lambdas, 1):
        start, results_file = time(), output_dir / f"{model}-lambda{lam:g}.json"
        results = run_once(results_file, model, dataset, config_files, {**start_dict, "reward_lambda": lam})
        rows.append({"run": model, "reward_lambda": lam, **result_row(results), "results_file": str(results_file)})
        print(
            f"[{index}/{len(lambdas)}] λ={lam:g}: {PLOT_SPLIT} {PLOT_METRICS[0]} "
            f"{rows[-1][f'{PLOT_SPLIT}/{PLOT_METRICS[0]}']:.4f} (BC {bc_score:.4f}), best epoch "
            f"{results['best_epoch']} of {results['epochs_run']}, {time() - start:.0f} s",
            flush=True,
        )
    csv_path, png_path = output_dir / "sweep.csv", output_dir / "sweep.png"
    write_csv([bc_row, *rows], csv_path)
    title = f"{model} on {dataset}: {bc['n_test_filtered']} test cases rated >= {bc['eval_rating_threshold']}"
    plot_sweep(bc_row, rows, png_path, title)
    return {"bc_checkpoint": checkpoint, "csv": str(csv_path), "png": str(png_path), "rows": [bc_row, *rows]}


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", "-m", default="ExpRSFT", help="post-training model that reads reward_lambda")
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--reward_lambda_values", default="[0.1,0.25,0.5,1,2,5]", help="list of λ > 0")
    parser.add_argument("--output_dir", default=None, help="default: sweep/<model>-<dataset>")
    parser.add_argument("--results_file", default=None, help="summary JSON; default <output_dir>/sweep.json")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, overrides = parse_command_line(parser, argv)  # the sweep sets reward_lambda, epochs and results_file per run
    if "reward_lambda" in overrides:
        raise AlignError("give the λ values with --reward_lambda_values, not --reward_lambda.")
    lambdas = parse_lambdas(args.reward_lambda_values)
    output_dir = Path(args.output_dir or Path("sweep") / f"{args.model}-{args.dataset}")
    summary = run_sweep(args.model, args.dataset, lambdas, output_dir, args.config_file_list or None, overrides)
    results_file = Path(args.results_file or output_dir / "sweep.json")
    results_file.write_text(json.dumps(summary, indent=2))
    print(f"wrote {summary['csv']}, {summary['png']} and {results_file}")


if __name__ == "__main__":
    main()
