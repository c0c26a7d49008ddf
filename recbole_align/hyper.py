"""Hyper-parameter search with RecBole's ``HyperTuning`` over recbole-align runs.

    python -m recbole_align.hyper --model=ExpRSFT --dataset=ml-100k \\
        --params_file=recbole_align/properties/hyper/exp_rsft.hyper --algo=random --max_evals=8

As RecBole's ``run_hyper.py``: ``--params_file`` (RecBole's format: ``name choice [a,b]``, ``name
uniform low,high``, ``name loguniform low,high`` or ``name quniform low,high,q``, one per line),
``--algo`` (exhaustive | random | bayes; exhaustive tries every combination of the ``choice``
values), ``--max_evals``, ``--early_stop`` (trials without improvement) and ``--config_files``;
any other ``--key=value`` is a fixed setting of every trial. The fixed settings go to
``<output_file stem>.fixed.yaml``, the config file that :func:`objective_function` reads them from.

Each trial is one :func:`~recbole_align.quick_start.run_recbole_align` run, scored by the
rating-filtered valid metric (``valid_metric``) of its best epoch, with its own checkpoint and
results JSON under ``checkpoint_dir``. ``--output_file`` (default ``hyper/<model>-<dataset>.json``)
gets the best parameters and every trial's parameters, scores and results file.
"""

import argparse
import hashlib
import json
import os
from logging import getLogger
from pathlib import Path

import yaml
from recbole.trainer import HyperTuning

from recbole_align.trainer.align_trainer import selection_split
from recbole_align.errors import AlignError
from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import build_config, read_property_file
from recbole_align.quick_start import run_bc_stage, run_recbole_align
from recbole_align.safe_write import write_json, write_text
from recbole_align.stages import plan_run


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """RecBole's ``objective_function`` for recbole-align models: run the model and dataset that
    ``config_dict`` (the trial's parameters) or the config files (the fixed settings) name, and score
    it on the rating-filtered valid cases. Returns RecBole's keys (model, best_valid_score,
    valid_score_bigger, best_valid_result, test_result: the filtered metrics) and ``results_file``.

    The trial writes ``<checkpoint_dir>/<model>-<dataset>-trial-<hash>.{pth,json}`` (the hash covers
    its parameters and the config files). A post-training trial without ``pretrained_checkpoint``
    starts from the BC stage of the config files alone, so the trials share one BC checkpoint
    even when they search BC keys such as ``learning_rate``.
    """
    files = list(config_file_list or [])
    trial = dict(config_dict or {})
    named = {}
    for path in files:
        named.update(read_property_file(path))
    named.update(trial)
    model, dataset = named.get("model"), named.get("dataset")
    if not model or not dataset:
        raise AlignError("the hyper-parameter search needs `model` and `dataset` set in a config file.")
    config, spec = build_config(model, dataset, files, trial)
    if spec.post_training and not config["pretrained_checkpoint"]:
        plan = plan_run(model, dataset, files)
        run_bc_stage(plan)
        trial["pretrained_checkpoint"] = plan.run.config["pretrained_checkpoint"]
    key = json.dumps({"files": [Path(f).read_text() for f in files], "trial": trial}, sort_keys=True, default=str)
    stem = Path(config["checkpoint_dir"]) / f"{model}-{dataset}-trial-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    trial.update(checkpoint_file=f"{stem}.pth", results_file=f"{stem}.json")
    logger = getLogger()
    for handler in logger.handlers[:]:  # each trial logs to its own file, as in RecBole's objective_function
        logger.removeHandler(handler)
    results = run_recbole_align(model, dataset, files, trial, saved=saved)
    valid_metric = results["config"]["valid_metric"].lower()
    selection = selection_split(results["config"])  # the valid cases the trial chose its epoch on
    return {
        "model": model,
        "best_valid_score": results[selection][valid_metric],
        "valid_score_bigger": results["config"]["valid_metric_bigger"],
        "best_valid_result": results[selection],
        "test_result": results["test_filtered"],
        "results_file": results["results_file"],
    }


def run_search(tuner, output_file):
    """Run ``tuner`` (a RecBole HyperTuning of :func:`objective_function`) and write its best
    parameters and trials to ``output_file``; returns that summary."""
    tuner.run()
    best = tuner.params2result[tuner.params2str(tuner.best_params)]
    summary = {
        "best_params": tuner.best_params,
        "best_valid_score": tuner.best_score,
        "best_valid_result": best["best_valid_result"],
        "best_test_result": best["test_result"],
        "best_results_file": best["results_file"],
        "trials": [{"params": params, **result} for params, result in tuner.params2result.items()],
    }
    write_json(output_file, summary)
    return summary


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align hyper", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--model", "-m", default="ExpRSFT")
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--params_file", required=True, help="RecBole hyper file, e.g. recbole_align/properties/hyper/exp_rsft.hyper")
    parser.add_argument("--algo", default="exhaustive", choices=("exhaustive", "random", "bayes"))
    parser.add_argument("--max_evals", type=int, default=10, help="trials of random and bayes")
    parser.add_argument("--early_stop", type=int, default=10, help="stop after this many trials without improvement")
    parser.add_argument("--output_file", default=None, help="default: hyper/<model>-<dataset>.json")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, overrides = parse_command_line(parser, argv)
    output_file = Path(args.output_file or Path("hyper") / f"{args.model}-{args.dataset}.json")
    config_files = args.config_file_list
    config, _ = build_config(args.model, args.dataset, config_files, overrides)  # fails early on bad names
    if not Path(args.params_file).is_file():
        raise AlignError(f"params_file [{args.params_file}] does not exist.")
    output_file.parent.mkdir(parents=True, exist_ok=True)
    fixed_file = output_file.with_suffix(".fixed.yaml")
    write_text(fixed_file, yaml.safe_dump({"model": args.model, "dataset": args.dataset, **overrides}))
    os.environ.setdefault("HYPEROPT_FMIN_SEED", str(config["seed"]))  # reproducible random/bayes draws
    try:
        tuner = HyperTuning(
            objective_function, params_file=args.params_file, fixed_config_file_list=[*config_files, str(fixed_file)],
            algo=args.algo, max_evals=args.max_evals, early_stop=args.early_stop,
        )
    except (ValueError, SyntaxError, NameError) as error:  # RecBole's word on a malformed hyper file
        raise AlignError(f"params_file [{args.params_file}] is not a RecBole hyper file: {error}.") from None
    summary = run_search(tuner, output_file)
    print(f"best params: {summary['best_params']}; filtered valid {config['valid_metric']}: "
          f"{summary['best_valid_score']:.4f}; wrote {output_file}")


if __name__ == "__main__":
    main()
