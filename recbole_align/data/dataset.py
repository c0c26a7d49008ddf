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
"""

import numpy as np
import torch
from recbole.data.dataset import Dataset, SequentialDataset
from recbole.data.interaction import Interaction


class AlignSequentialDataset(SequentialDataset):
    """SequentialDataset with exact time order and optional one-sequence-per-user training."""

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
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data
