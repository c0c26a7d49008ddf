"""A run's data: the RecBole dataset with clear errors for data it cannot use, and the evaluation loaders."""

import copy
from logging import getLogger
from pathlib import Path

import numpy as np
import torch
from recbole.data import data_preparation
from recbole.utils import ModelType

from recbole_align.data.dataset import AlignSequentialDataset
from recbole_align.data.download import ensure_dataset
from recbole_align.errors import AlignError
from recbole_align.memory import catalogue_rows

EVAL_SPLITS = ("valid", "valid_filtered", "test", "test_filtered")  # the metric keys of a results JSON


def load_dataset(config, model_class):
    """The RecBole dataset for ``config``, with clear errors for data the run cannot use."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        raise AlignError(
            f"recbole-align evaluates sequential recommenders on leave-one-out next-item cases; "
            f"[{config['model']}] is a {config['MODEL_TYPE'].name.lower()} RecBole model."
        )
    ensure_dataset(config)
    inter_file = Path(config["data_path"]) / f"{config['dataset']}.inter"
    if not inter_file.is_file():
        raise AlignError(
            f"Dataset [{config['dataset']}] not found: no file [{inter_file}] (set --data_path to the "
            f"folder that holds {config['dataset']}/{config['dataset']}.inter; it is not one of RecBole's "
            f"downloadable datasets, and no dataset_url is set)."
        )
    try:
        dataset = AlignSequentialDataset(config, getattr(model_class, "all_position_training", False))
    except ValueError as error:  # e.g. pandas cannot read a :float column such as the rating
        raise AlignError(
            f"Dataset [{config['dataset']}] could not be loaded from [{inter_file}]: {error} "
            f"(a :float column must hold numbers only)."
        ) from None
    if dataset.time_field not in dataset.field2type:
        raise AlignError(
            f"[{config['model']}] needs a timestamp: dataset [{config['dataset']}] has no "
            f"[{config['TIME_FIELD']}] field loaded (check TIME_FIELD, load_col and the .inter header)."
        )
    check_data(config, dataset)
    return dataset


def split_loaders(config, dataset):
    """RecBole's (train, valid, test) loaders of ``dataset`` (``data_preparation``), the evaluation ones in
    batches of at most the cases whose [cases x catalogue] scores fit ``catalogue_chunk_mb`` (see
    recbole_align.memory): RecBole's full-sort evaluation scores a whole batch at once. That batch size
    is the loaders' own (they get a copy of the config); the run's config stays as planned, and the
    metrics do not depend on it."""
    rows = catalogue_rows(dataset.item_num, config["catalogue_chunk_mb"])
    loaders_config = config
    if rows < config["eval_batch_size"]:
        getLogger().info(
            f"evaluation batches of {rows} cases (eval_batch_size {config['eval_batch_size']}): the scores of "
            f"{dataset.item_num} items fit catalogue_chunk_mb={config['catalogue_chunk_mb']} for {rows} cases at a time"
        )
        loaders_config = copy.copy(config)
        loaders_config.final_config_dict = {**config.final_config_dict, "eval_batch_size": rows}
    return data_preparation(loaders_config, dataset)


def check_data(config, dataset):
    """Refuse data that would give a wrong number or a deep error later: ratings that are not finite,
    training-rating noise without ratings (or on RecBole's benchmark files, which it does not split),
    and a catalogue smaller than the largest ``topk``."""
    rating = config["RATING_FIELD"]
    if config["reward_noise_std"] and (rating not in dataset.field2type or config["benchmark_filename"]):
        raise AlignError(
            f"reward_noise_std={config['reward_noise_std']} noises the training ratings: it needs the rating "
            f"field [{rating}] loaded and recbole-align's own split (no benchmark_filename)."
        )
    if rating in dataset.field2type:
        ratings = torch.as_tensor(np.asarray(dataset.inter_feat[rating], dtype=np.float64))
        bad = ~torch.isfinite(ratings)  # NaN was filled by RecBole (and counted) already
        if bad.any():
            raise AlignError(
                f"Dataset [{config['dataset']}]: {int(bad.sum())} rating(s) are not finite (inf): every "
                f"[{rating}] must be a finite number."
            )
    topk = max(config["topk"]) if isinstance(config["topk"], list) else config["topk"]
    if topk >= dataset.item_num:  # item_num counts the padding id 0
        raise AlignError(
            f"topk {config['topk']} asks for {topk} items, but dataset [{config['dataset']}] has only "
            f"{dataset.item_num - 1}: set a smaller topk, e.g. --topk=[{max(1, min(10, dataset.item_num - 1))}]."
        )


def check_splits(config, train_data, valid_data, test_data):
    """Refuse a split that leaves no training, valid or test case (e.g. users with too few interactions)."""
    for name, loader in (("training", train_data), ("valid", valid_data), ("test", test_data)):
        if len(loader.dataset) == 0:
            raise AlignError(
                f"Dataset [{config['dataset']}] leaves no {name} case: leave-one-out needs users with at least "
                f"4 interactions (a first item as history, then a training, a valid and a test target)."
            )
