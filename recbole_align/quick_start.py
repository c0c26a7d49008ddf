"""The run behind ``recbole-align`` and ``run_recbole_align.py``: a planned stage (recbole_align.stages) -> data ->
model -> trainer -> results JSON."""

import argparse
import json
import os
import sys
from logging import getLogger
from pathlib import Path

import numpy as np
import torch
from recbole.utils import init_seed, set_color

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.compat import deterministic_cuda, init_logger, join_process_group
from recbole_align.config import json_safe, spec_of
from recbole_align.data import check_splits, length_grouped, load_dataset, split_loaders
from recbole_align.diagnostics import avg_reward, checkpoint_model
from recbole_align.errors import AlignError
from recbole_align.evaluator import rating_filtered_loader
from recbole_align.identity import run_identity
from recbole_align.model.policy import NextItemPolicy
from recbole_align.pretrained import load_pretrained, read_pretrained
from recbole_align.safe_write import opened_atomically, write_json
from recbole_align.stages import multi_process, plan_run
from recbole_align.trainer.align_trainer import last_state_file


def run_recbole_align(model="HSTU", dataset="ml-100k", config_file_list=None, config_dict=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate it, unfiltered and on the rating-filtered cases: the
    stages of :func:`recbole_align.stages.plan_run` (a post-training run's BC stage first when it needs one).

    Returns the results dict that is also written as JSON to ``results_file`` (default: next to
    the checkpoint): model, dataset, seed, {valid,test}[_filtered] metrics, case counts,
    checkpoint, timings, the per-epoch log and, for a model with a reward head, ``avg_reward``
    (its generations on the test cases scored by the BC checkpoint's reward head). With ``resume``
    (a ``<checkpoint>.last.pth``) it continues that run from its last validated epoch.
    """
    plan = plan_run(model, dataset, config_file_list, config_dict)
    run_bc_stage(plan)
    return run_stage(plan.run, saved)


def run_bc_stage(plan):
    """Run the stages before ``plan``'s run: the BC stage that trains its starting checkpoint, if it has one."""
    for stage in plan.stages[:-1]:
        run_stage(stage)


def run_stage(stage, saved=True):
    """One stage: start logging, log what the plan settled, then train and evaluate here or in ``nproc``
    processes (:func:`run_processes`); a BC stage's checkpoint is published under its final name when done."""
    config = stage.config
    start_logging(config)
    for note in stage.notes:
        getLogger().info(set_color(note, "green"))
    if multi_process(config):
        results = run_processes(config, saved)
    else:
        results = train_and_evaluate(config, stage.spec, saved)
    if stage.publish:
        partial = Path(config["checkpoint_file"])
        partial.replace(stage.publish)
        Path(last_state_file(partial)).unlink(missing_ok=True)
    return results


def start_logging(config):
    """Check the output folders, seed, and start RecBole's logger with the run's config."""
    writable_folder(config["checkpoint_dir"], "checkpoint_dir")
    if config["results_file"]:
        writable_folder(Path(config["results_file"]).parent, "The folder of results_file")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    getLogger().info(sys.argv)
    getLogger().info(config)


def train_and_evaluate(config, spec, saved=True):
    """data -> model (a post-training one from ``pretrained_checkpoint``) -> trainer -> evaluation of
    every split -> the results JSON (see :func:`run_recbole_align`)."""
    logger = getLogger()
    pretrained = read_pretrained(config["pretrained_checkpoint"]) if spec.post_training else None
    data = load_dataset(config, spec.model_class)
    identity = run_identity(config)
    logger.info(data)
    train_data, valid_data, test_data = split_loaders(config, data)
    check_splits(config, train_data, valid_data, test_data)
    if issubclass(spec.model_class, NextItemPolicy):  # the models that trim batches; RecBole's own train as RecBole does
        train_data = length_grouped(config, train_data)
    valid_selection = valid_data if config["valid_cases"] == "all" else rating_filtered_loader(config, valid_data, "valid")

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    deterministic_cuda(config)
    recommender = spec.model_class(config, train_data._dataset)
    if spec.post_training:
        load_pretrained(recommender, pretrained, config)
        logger.info(set_color("loaded pretrained weights", "blue") + f": {config['pretrained_checkpoint']}")
    recommender = recommender.to(config["device"])
    logger.info(recommender)
    trainer = spec.trainer_class(config, recommender)
    trainer.identity = identity
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"])
    if config["epoch_test_metrics"]:
        trainer.epoch_test_loader = test_data

    trainer.fit(train_data, valid_selection, saved=saved, show_progress=config["show_progress"])

    final, best = evaluate_final_and_best(trainer, valid_data, test_data, saved)
    metrics, counts = {}, {}
    for split in ("valid", "test"):
        result = best[split]
        metrics[split], metrics[f"{split}_filtered"] = result.metrics, result.filtered_metrics
        counts[f"n_{split}"], counts[f"n_{split}_filtered"] = len(result.keep), int(result.keep.sum())
    for split, value in metrics.items():
        logger.info(set_color(f"{split} result ({counts[f'n_{split}']} cases)", "yellow") + f": {value}")

    results = {
        "model": config["model"],
        "dataset": config["dataset"],
        "seed": config["seed"],
        "identity": identity,
        **metrics,
        **counts,
        "checkpoint": trainer.saved_model_file if saved else None,
        "pretrained_checkpoint": config["pretrained_checkpoint"] if spec.post_training else None,
        "train_seconds": trainer.fit_seconds,  # a resumed run's earlier processes included
        "epochs_run": len(trainer.epoch_log),
        "best_epoch": trainer.best_epoch(),
        "seconds_per_epoch": sum(e["train_seconds"] for e in trainer.epoch_log) / max(len(trainer.epoch_log), 1),
        "peak_memory_mb": trainer.peak_memory_mb(),
        "eval_rating_threshold": config["eval_rating_threshold"],
        "epoch_log": trainer.epoch_log,
        "config": json_safe(config.final_config_dict),
    }
    if config["local_rank"] != 0:  # a multi-process run: the first process of each machine reports
        return results
    if getattr(recommender, "reward_head", None) is not None:
        judge = recommender  # a BC run judges itself; a post-trained model is judged by its BC checkpoint
        if pretrained is not None:
            judge = checkpoint_model(spec.model_class, pretrained, config, train_data._dataset)
        results["avg_reward"] = avg_reward(recommender, judge, test_data, config)
        logger.info(set_color("avg_reward", "yellow") + f": {results['avg_reward']:.4f}")
    results_file = Path(config["results_file"] or Path(trainer.saved_model_file).with_suffix(".json"))
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results["cases_file"] = str(cases_file_of(results_file))
    write_cases(results["cases_file"], final, best, results)
    write_json(results_file, results)
    results["results_file"] = str(results_file)
    logger.info(set_color("results written to", "blue") + f": {results_file}")
    return results


def evaluate_final_and_best(trainer, valid_data, test_data, saved):
    """({split: SplitResult} of the model as training left it, the same of the best checkpoint), each
    case scored once per model: the final test pass is the last epoch's (``epoch_test_metrics``) when
    the last epoch was validated, and the final model is the best one (no pass of its own) when the best epoch is the
    last or nothing was saved."""
    last_epoch = trainer.epoch_log[-1]["epoch"] if trainer.epoch_log else None
    final = None
    last_epoch_test = trainer.last_epoch_test if trainer.epoch_log and "test" in trainer.epoch_log[-1] else None
    if saved and last_epoch is not None and trainer.best_epoch() != last_epoch:
        final = {
            "valid": trainer.evaluate_split(valid_data, "valid"),
            "test": last_epoch_test or trainer.evaluate_split(test_data, "test"),
        }
    best = {
        "valid": trainer.evaluate_split(valid_data, "valid", load_best_model=saved),
        "test": trainer.evaluate_split(test_data, "test"),
    }
    return final or best, best


def cases_file_of(results_file):
    """Where a run's per-case results go: ``<results>.cases.npz`` beside its results JSON."""
    return Path(results_file).with_suffix(".cases.npz")


def write_cases(path, final, best, results):
    """The per-case results of a run (numpy ``.npz``, no pickled objects), for the valid and test
    splits, one entry per case in RecBole's case order: ``{split}_user_id`` (the user's token),
    ``{split}_rating`` (the held-out item's rating), ``{split}_keep`` (counted by the filtered metrics),
    ``{split}_rank`` (the held-out item's rank in the full ranking, history excluded, ties averaged;
    1 is the top) of the best checkpoint, and ``{split}_rank_final`` of the model at the end of
    training; ``best_epoch`` and ``final_epoch`` (-1 when none)."""
    arrays = {}
    for split in ("valid", "test"):
        arrays.update(best[split].per_case(split))
        arrays[f"{split}_rank_final"] = final[split].rank
    epochs = [entry["epoch"] for entry in results["epoch_log"]]
    best_epoch = results["best_epoch"]
    with opened_atomically(path) as file:
        np.savez_compressed(
            file, **arrays, best_epoch=-1 if best_epoch is None else best_epoch,
            final_epoch=epochs[-1] if epochs else -1,
        )


def run_processes(config, saved=True):
    """Run ``config`` as RecBole's distributed mode does (``run_recboles``): ``nproc`` processes on
    this machine, ranks ``offset`` .. ``offset + nproc - 1`` of ``world_size`` (planned), each one
    :func:`train_and_evaluate` on its copy of ``config`` with its ``local_rank``; every process loads
    the best model that its machine's first process saved under the planned ``checkpoint_file``.
    Returns the results that the first process writes."""
    import torch.multiprocessing as mp

    if config["device"].type == "cuda" and torch.cuda.device_count() < config["nproc"]:
        raise AlignError(
            f"nproc={config['nproc']} needs one GPU per process, but gpu_id [{config['gpu_id']}] makes "
            f"{torch.cuda.device_count()} visible: list {config['nproc']} of them, e.g. --gpu_id=0,1, "
            f"or set --gpu_id='' to run the processes on the CPU."
        )
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(_run_process, args=(config, saved, errors), nprocs=config["nproc"])
    except mp.ProcessExitedException:
        if errors.empty():
            raise
        raise AlignError(errors.get()) from None
    results_file = Path(config["results_file"] or Path(config["checkpoint_file"]).with_suffix(".json"))
    return {**json.loads(results_file.read_text()), "results_file": str(results_file)}


def _run_process(local_rank, config, saved, errors):
    """One process of :func:`run_processes`; an AlignError's message goes back through ``errors``."""
    torch.set_num_threads(max(1, torch.get_num_threads() // config["nproc"]))  # CPU threads shared out
    config.compatibility_settings()  # RecBole's numpy aliases, which building a Config sets (this one was unpickled)
    try:
        join_process_group(config, local_rank)
        start_logging(config)
        train_and_evaluate(config, spec_of(config), saved)
    except AlignError as error:
        errors.put(str(error))
        sys.exit(2)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def writable_folder(folder, what):
    """Create ``folder`` if needed, or fail now with a clear error rather than after training."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AlignError(f"{what} [{folder}] cannot be created: {error.strerror}.") from None
    if not os.access(folder, os.W_OK):
        raise AlignError(f"{what} [{folder}] is not writable.")


@exit_on_error
def main(argv=None):
    """Command line: ``--model``, ``--dataset``, ``--config_files`` (space separated) as in RecBole;
    any other ``--key=value`` is a config override with the priority RecBole gives the command line
    (it reaches RecBole as ``config_dict``, so that a nested run such as the BC stage can still set
    its own checkpoint and results files). Subcommands: ``recbole-align --help``."""
    parser = argparse.ArgumentParser(prog="recbole-align", description=__doc__, allow_abbrev=False,
                                     epilog="subcommands: recbole-align {benchmark,diagnostics,hyper,recommend,export} --help")
    parser.add_argument("--model", "-m", default="HSTU", help="recbole-align or RecBole model name")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, overrides = parse_command_line(parser, argv)
    run_recbole_align(args.model, args.dataset, config_file_list=args.config_file_list or None, config_dict=overrides)
