"""The sequential dataset behind every sequential model run through recbole-align.

Two changes to RecBole's :class:`~recbole.data.dataset.SequentialDataset`, both vectorised:

* **Exact time order.** RecBole stores timestamps as float32 (64 s resolution for today's Unix
  times) and sorts by them, so ratings given within the same minute keep file order. We sort the
  raw table by (user, timestamp) in float64 first and keep the timestamp column in float64, so
  the order and the time gaps that HSTU buckets are exact. Every model (HSTU and RecBole
  baselines alike) sees the same order and the same split.
* **One training sequence per user** for models with ``all_position_training = True`` (HSTU):
  only the last ``min(3, n - 1)`` prefixes of a user are built. RecBole's leave-one-out then makes
  the longest one the user's single training sample (the loss is taken at every position of it)
  and the other two the valid and test cases, which are exactly the cases RecBole's own
  per-prefix augmentation produces. Other models get RecBole's per-prefix samples.

With ``reward_noise_std`` σ > 0, the ratings of the **training split** (its targets and histories)
become r + σ ξ_i, ξ_i ~ N(0, 1), one draw per interaction i of the (user, time)-sorted table from a
generator seeded with ``seed`` (:func:`rating_noise`): every run with the same seed and data (the BC
stage, its reward head, any post-training) sees the same noisy ratings. The valid and test splits
keep the clean ratings: their targets' ratings are what the evaluator filters on, and their
histories' ratings are no model's input (the backbones read item ids and timestamps only).
"""

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.data.interaction import Interaction

from recbole_align.compat import c_csv_parser
from recbole_align.data.atomic import readable_atomic_file

NOISE_SEED_OFFSET = 7919  # the noise generator's seed is config["seed"] + this, apart from the run's other draws (ours)
INTERACTION_INDEX = "_interaction_index"  # build()-time column: a sample's target in the sorted table


def rating_noise(n, std, seed):
    """σ ξ_i for interactions i = 0..n-1, ξ_i ~ N(0, 1) i.i.d. (float64), drawn at once from a generator
    seeded with seed + NOISE_SEED_OFFSET: the same seed and table give every interaction the same draw."""
    generator = torch.Generator().manual_seed(seed + NOISE_SEED_OFFSET)
    return std * torch.randn(n, generator=generator, dtype=torch.float64)


def add_noise(inter, noise, rating, rating_list, length_field):
    """``inter``'s target ratings and history ratings plus the noise of their interactions: the target
    is interaction INTERACTION_INDEX, its history the item_length interactions before it (padding stays 0)."""
    target, lengths = inter[INTERACTION_INDEX], inter[length_field]
    inter[rating] = (inter[rating].double() + noise[target]).to(inter[rating].dtype)
    history = inter[rating_list]
    offsets = torch.arange(history.size(1))
    valid = offsets < lengths.unsqueeze(1)
    index = (target - lengths).unsqueeze(1) + offsets
    noisy = history.double() + noise[torch.where(valid, index, 0)]
    inter[rating_list] = torch.where(valid, noisy, 0).to(history.dtype)


class ReadsAtomicFilesAsSaved:
    """A RecBole dataset mixin: atomic files read as text tools save them (:mod:`recbole_align.data.atomic`)."""

    def _load_feat(self, filepath, source):
        with readable_atomic_file(filepath, self.config["field_separator"], self.config["encoding"]) as path, c_csv_parser():
            return super()._load_feat(path, source)


class FiltersByInterNum:
    """Mixin for a RecBole Dataset: ``inter_num_filter`` chooses how the interaction-count filters apply."""

    def _filter_by_inter_num(self):
        """RecBole's filter by ``user_inter_num_interval`` and ``item_inter_num_interval`` (``inter_num_filter:
        kcore``: repeated until every user and item is inside its interval), or the HSTU reference's Amazon
        preprocessing (``once``): drop the interactions of the users and items outside their intervals by
        their counts in the raw file, once, then those of the users left outside theirs."""
        if self.config["inter_num_filter"] != "once":
            return super()._filter_by_inter_num()
        intervals = {field: self._parse_intervals_str(self.config[key]) for field, key in (
            (self.uid_field, "user_inter_num_interval"), (self.iid_field, "item_inter_num_interval"))}
        for fields in ((self.uid_field, self.iid_field), (self.uid_field,)):
            inter = self.inter_feat
            keep = pd.Series(True, index=inter.index)
            for field in (f for f in fields if intervals[f]):
                keep &= self._within_intervals(inter[field].map(inter[field].value_counts()), intervals[field])
            self.inter_feat.drop(inter.index[~keep], inplace=True)
        for feat, field in ((self.user_feat, self.uid_field), (self.item_feat, self.iid_field)):
            if feat is not None:  # the users and items no interaction is left of, as RecBole's filter drops them
                feat.drop(feat.index[~feat[field].isin(self.inter_feat[field])], inplace=True)


class AlignDataset(FiltersByInterNum, ReadsAtomicFilesAsSaved, Dataset):
    """RecBole's plain Dataset (every interaction, remapped, unsplit, no histories) on the same files."""


class AlignSequentialDataset(FiltersByInterNum, ReadsAtomicFilesAsSaved, SequentialDataset):
    """SequentialDataset with exact time order and optional one-sequence-per-user training, reading atomic
    files as text tools save them."""

    def __init__(self, config, all_position_training=False):
        self.all_position_training = all_position_training
        super().__init__(config)

    def _fill_nan(self):
        """Count the interactions without a rating (``missing_ratings``) before RecBole fills them with
        the mean rating; reward-weighted post-training refuses such data."""
        rating = self.config["RATING_FIELD"]
        has_rating = self.inter_feat is not None and rating in self.inter_feat
        self.missing_ratings = int(self.inter_feat[rating].isna().sum()) if has_rating else 0
        super()._fill_nan()

    def _change_feat_format(self):
        if self.config["benchmark_filename"] is not None:
            return super()._change_feat_format()
        exact_time = None
        if self.time_field in self.inter_feat:
            self.inter_feat.sort_values(
                [self.uid_field, self.time_field], kind="stable", inplace=True, ignore_index=True
            )
            exact_time = torch.tensor(self.inter_feat[self.time_field].to_numpy(np.float64))
        Dataset._change_feat_format(self)
        if exact_time is not None:
            self.inter_feat[self.time_field] = exact_time
        self.data_augmentation()

    def build(self):
        """RecBole's splits; with ``reward_noise_std`` > 0, the training split's ratings noised (module docstring)."""
        datasets = super().build()
        if INTERACTION_INDEX in self.inter_feat:
            rating = self.config["RATING_FIELD"]
            add_noise(datasets[0].inter_feat, self.rating_noise, rating, getattr(self, f"{rating}_list_field"),
                      self.item_list_length_field)
            for part in (self, *datasets):
                part.inter_feat.drop(INTERACTION_INDEX)
        return datasets

    def data_augmentation(self):
        """Build ``<field>_list`` histories for the chosen targets (see the module docstring)."""
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        self.sort(by=[self.uid_field, self.time_field], ascending=True)

        uid = self.inter_feat[self.uid_field].numpy()
        n = len(uid)
        user_start = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
        user_len = np.diff(np.r_[user_start, n])
        position = np.arange(n) - np.repeat(user_start, user_len)
        remaining = np.repeat(user_len, user_len) - position  # 1 for a user's last interaction
        is_target = position > 0
        if self.all_position_training:
            is_target &= remaining <= 3
        target_index = np.flatnonzero(is_target)

        max_len = self.max_item_list_len
        history_start = np.maximum(target_index - max_len, np.repeat(user_start, user_len)[target_index])
        history_len = target_index - history_start
        offsets = np.arange(max_len)
        gather = history_start[:, None] + offsets[None, :]
        valid = torch.from_numpy(offsets[None, :] < history_len[:, None])
        gather = torch.from_numpy(np.minimum(gather, n - 1))

        new_data = self.inter_feat[torch.from_numpy(target_index)]
        new_dict = {self.item_list_length_field: torch.from_numpy(history_len.astype(np.int64))}
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            values = self.inter_feat[field]
            if values.dim() != 1:
                raise ValueError(
                    f"recbole-align builds histories of scalar fields only; field [{field}] is a sequence."
                )
            history = values[gather]
            new_dict[getattr(self, f"{field}_list_field")] = torch.where(
                valid, history, torch.zeros((), dtype=values.dtype)
            )
        if self.config["reward_noise_std"]:
            self.rating_noise = rating_noise(n, self.config["reward_noise_std"], self.config["seed"])
            new_dict[INTERACTION_INDEX] = torch.from_numpy(target_index)
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data
