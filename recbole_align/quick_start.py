"""The run behind ``recbole-align`` and ``run_recbole_align.py``: config -> data -> model -> trainer -> results JSON."""

import argparse
import hashlib
import json
import os
import sys
from logging import getLogger
from pathlib import Path
from time import time

import numpy as np
import torch
from recbole.data import data_preparation
from recbole.utils import get_local_time, init_seed, set_color

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.compat import deterministic_cuda, init_logger, join_process_group
from recbole_align.config import backbone_spec, build_config, json_safe, resolve_model, spec_of, yaml_keys
from recbole_align.data import check_splits, length_grouped, load_dataset, run_inputs, stale_inputs
from recbole_align.diagnostics import avg_reward, checkpoint_model
from recbole_align.errors import AlignError
from recbole_align.evaluator import rating_filtered_loader
from recbole_align.model.policy import NextItemPolicy
from recbole_align.pretrained import adopt_architecture, check_resume, load_pretrained, read_pretrained
from recbole_align.registry import PROPERTIES_DIR
from recbole_align.trainer.align_trainer import last_state_file

# Config keys that do not change what a BC stage learns, left out of its reuse key.
RUN_ONLY_KEYS = {
    "gpu_id", "use_gpu", "state", "checkpoint_dir", "show_progress", "config_file", "save_dataset",
    "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "log_wandb", "wandb_project",
    "eval_batch_size", "worker", "results_file", "checkpoint_file", "pretrained_checkpoint", "resume",
    "nproc", "world_size", "ip", "port", "offset", "dist_backend", "catalogue_chunk_mb",
}


def behaviour_cloning_stage(config, config_file_list=None, config_dict=None):
    """The BC checkpoint a post-training run starts from: trained by a ``BC`` stage of the
    backbone (``backbone`` config key) on the same data and config, with a reward head if the method's
    trainer ``requires_reward_head``, saved under ``checkpoint_dir``, and reused by any later run
    whose BC config is the same (:func:`bc_stage_config`). An interrupted BC stage resumes from
    its last validated epoch when the run is started again."""
    bc_config, bc_spec, path = bc_stage_config(config, config_file_list, config_dict)
    backbone = config["backbone"]
    logger = getLogger()
    if path.is_file():
        changes = stale_inputs(path.with_suffix(".json"))
        if not changes:
            logger.info(set_color("BC stage", "green") + f": reusing {path}")
            return str(path)
        logger.info(set_color("BC stage", "green") + f": not reusing {path}: {'; '.join(changes)}")
    logger.info(set_color("BC stage", "green") + f": training {backbone} by behaviour cloning -> {path}")
    partial = path.with_suffix(".partial.pth")  # renamed when the BC run has finished, never reused before
    last = Path(last_state_file(partial))
    bc_config["checkpoint_file"], bc_config["results_file"] = str(partial), str(path.with_suffix(".json"))
    bc_config["resume"] = str(last) if last.is_file() else None
    run_stage(bc_config, bc_spec)
    partial.replace(path)
    last.unlink(missing_ok=True)
    logger.info(set_color(f"{config['model']} stage", "green") + f": post-training from {path}")
    return str(path)


def bc_stage_config(config, config_file_list=None, config_dict=None):
    """The BC stage of a post-training run: (config, spec, checkpoint path ``<backbone>-<dataset>-bc-<key>.pth``),
    the key a hash of the BC config's keys that change what BC learns. ``reward_noise_std`` is one of
    them only when the BC trains a reward head (the one part of BC that reads the noisy training
    ratings) and is not 0 (so the keys of runs without noise are those of before the key existed)."""
    backbone, dataset = config["backbone"], config["dataset"]
    bc_dict = {**(config_dict or {}), "pretrained_checkpoint": None, "results_file": None}
    if getattr(resolve_model(config["model"]).trainer_class, "requires_reward_head", False):
        bc_dict["reward_head"] = True
    bc_config, bc_spec = build_config("BC", dataset, config_file_list, bc_dict)
    known = {key for group in bc_config.parameters.values() for key in group}
    known |= set(yaml_keys(PROPERTIES_DIR / "overall.yaml")) | set(yaml_keys(backbone_spec(backbone).config_file))
    known |= set(bc_spec.model_class.architecture_keys) | {"dataset", "model", "backbone"}
    if not (bc_config["reward_head"] and bc_config["reward_noise_std"]):
        known.discard("reward_noise_std")
    reuse_config = {k: v for k, v in json_safe(bc_config.final_config_dict).items() if k in known - RUN_ONLY_KEYS}
    key = hashlib.sha1(json.dumps(reuse_config, sort_keys=True).encode()).hexdigest()[:12]
    return bc_config, bc_spec, Path(bc_config["checkpoint_dir"]) / f"{backbone}-{dataset}-bc-{key}.pth"


def run_recbole_align(model="HSTU", dataset="ml-100k", config_file_list=None, config_dict=None, saved=True):
    """Train ``model`` on ``dataset`` and evaluate it, unfiltered and on the rating-filtered cases.

    Returns the results dict that is also written as JSON to ``results_file`` (default: next to
    the checkpoint): model, dataset, seed, {valid,test}[_filtered] metrics, case counts,
    checkpoint, timings, the per-epoch log and, for a model with a reward head, ``avg_reward``
    (its generations on the test cases scored by the BC checkpoint's reward head). With ``resume``
    (a ``<checkpoint>.last.pth``) it continues that run from its last validated epoch.
    """
    config, spec = build_config(model, dataset, config_file_list, config_dict)
    return run_stage(config, spec, config_file_list, config_dict, saved)


def run_stage(config, spec, config_file_list=None, config_dict=None, saved=True):
    """A run from its built ``config`` (``config_file_list`` and ``config_dict`` built it): check
    ``resume``, start logging, train or reuse the BC checkpoint first when a post-training run names
    none (:func:`behaviour_cloning_stage`, a stage of its own), then train and evaluate here or in
    ``nproc`` processes (:func:`run_processes`)."""
    if config["resume"]:
        check_resume(config)
    start_logging(config)
    if spec.post_training and not config["pretrained_checkpoint"]:
        config["pretrained_checkpoint"] = behaviour_cloning_stage(config, config_file_list, config_dict)
    if config["single_spec"] and (config["nproc"] > 1 or config["world_size"] > 0):
        return run_processes(config, saved)
    return train_and_evaluate(config, spec, saved)


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
    logger, pretrained = getLogger(), None
    if spec.post_training:
        pretrained = read_pretrained(config["pretrained_checkpoint"])
        for key, (configured, adopted) in adopt_architecture(config, pretrained, spec.model_class).items():
            logger.info(f"{key} = {adopted!r} from the pretrained checkpoint (config said {configured!r})")

    data = load_dataset(config, spec.model_class)
    inputs = run_inputs(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
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
    if config["resume"]:
        trainer.resume_checkpoint(config["resume"])
    if config["epoch_test_metrics"]:
        trainer.epoch_test_loader = test_data

    start = time()
    trainer.fit(train_data, valid_selection, saved=saved, show_progress=config["show_progress"])
    train_seconds = time() - start

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
        "inputs": inputs,
        **metrics,
        **counts,
        "checkpoint": trainer.saved_model_file if saved else None,
        "pretrained_checkpoint": config["pretrained_checkpoint"] if spec.post_training else None,
        "train_seconds": train_seconds,
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
    results_file.write_text(json.dumps(results, indent=2))
    results["results_file"] = str(results_file)
    logger.info(set_color("results written to", "blue") + f": {results_file}")
    return results


def evaluate_final_and_best(trainer, valid_data, test_data, saved):
    """({split: SplitResult} of the model as training left it, the same of the best checkpoint), each
    case scored once per model: the final test pass is the last epoch's (``epoch_test_metrics``) when
    there is one, and the final model is the best one (no pass of its own) when the best epoch is the
    last or nothing was saved."""
    last_epoch = trainer.epoch_log[-1]["epoch"] if trainer.epoch_log else None
    final = None
    if saved and last_epoch is not None and trainer.best_epoch() != last_epoch:
        final = {
            "valid": trainer.evaluate_split(valid_data, "valid"),
            "test": trainer.last_epoch_test or trainer.evaluate_split(test_data, "test"),
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
    np.savez_compressed(
        path, **arrays, best_epoch=-1 if best_epoch is None else best_epoch, final_epoch=epochs[-1] if epochs else -1
    )


def run_processes(config, saved=True):
    """Run ``config`` as RecBole's distributed mode does (``run_recboles``): ``nproc`` processes on
    this machine, ranks ``offset`` .. ``offset + nproc - 1`` of ``world_size`` (default ``nproc``),
    each one :func:`train_and_evaluate` on its copy of ``config`` with its ``local_rank``. The
    checkpoint's name is chosen here, so that every process loads the best model that its machine's
    first process saved. Returns the results that the first process writes."""
    import torch.multiprocessing as mp

    if config["device"].type == "cuda" and torch.cuda.device_count() < config["nproc"]:
        raise AlignError(
            f"nproc={config['nproc']} needs one GPU per process, but gpu_id [{config['gpu_id']}] makes "
            f"{torch.cuda.device_count()} visible: list {config['nproc']} of them, e.g. --gpu_id=0,1, "
            f"or set --gpu_id='' to run the processes on the CPU."
        )
    config["checkpoint_file"] = config["checkpoint_file"] or str(
        Path(config["checkpoint_dir"]) / f"{config['model']}-{get_local_time()}.pth"
    )
    config["world_size"] = config["world_size"] if config["world_size"] > 0 else config["nproc"]
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
