"""Per-case evaluation: each case of a split scored once, the metrics of all its cases and of its
rating-filtered cases computed from the same per-case results, and those results kept per case."""

from dataclasses import dataclass

import numpy as np
import torch
from recbole.evaluator import Collector
from recbole.evaluator.collector import DataStruct

from recbole_align.evaluator.filtering import rating_filter

# The collector's per-case keys (one row per case); its other keys describe the data set.
CASE_KEYS = ("rec.items", "rec.topk", "rec.meanrank", "rec.score", "data.label")


# entries compared at a time when counting: a [cases x catalogue] comparison at once costs more to allocate
# (fresh pages) than to count; blocks of rows this size stay in cache and are reused
COUNT_BLOCK = 1 << 22


def counted_above(rows, thresholds, inclusive=False):
    """#{a : rows[j, a] > thresholds[j]} (``>=`` when ``inclusive``) for each row j, in int32 (a catalogue
    has far fewer than 2^31 items), counted over blocks of about COUNT_BLOCK entries."""
    compare = torch.ge if inclusive else torch.gt
    height = max(1, COUNT_BLOCK // rows.size(1))
    return torch.cat([compare(block, limit).sum(1, dtype=torch.int32)
                      for block, limit in zip(rows.split(height), thresholds.split(height))])


def target_ranks(rows, targets):
    """rank_j = #{a : s_ja > s_j,t} + (#{a : s_ja = s_j,t} + 1) / 2 for each row j of scores and its target
    t = targets[j]: counted, no sort."""
    target_score = rows.gather(1, targets.unsqueeze(1))
    above = counted_above(rows, target_score)
    return above + (counted_above(rows, target_score, inclusive=True) - above + 1) / 2


class CaseCollector(Collector):
    """RecBole's evaluation Collector that always keeps each case's rank (``rec.meanrank``, also when
    no metric asks for it), computed by counting (:func:`target_ranks`) rather than by sorting the
    catalogue: the average rank of the target among its ties, which is RecBole's value (``_average_rank``
    of the descending sort), at O(n_items) per case instead of O(n_items log n_items). The candidate
    count (RecBole's ``user_len_list``, the position of the first lowest score) is
    #{a : s_ia > min_a s_ia}. ``rec.topk`` is RecBole's too, without its [cases x catalogue] matrix."""

    last_struct = None  # the struct of the last evaluation (see get_data_struct)

    def __init__(self, config):
        super().__init__(config)
        self.wants_top_hits = self.register.need("rec.topk")
        for key in ("rec.meanrank", "rec.topk"):  # collected below (the ranks for every metric set)
            setattr(self.register, key, False)

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        n_cases, n_items = scores_tensor.shape
        pairs = torch.unique(positive_u * n_items + positive_i)  # a (case, target) pair counts once, as in RecBole
        positive_u, positive_i = pairs // n_items, pairs % n_items
        pos_len = torch.bincount(positive_u, minlength=n_cases)
        if self.wants_top_hits:
            self.data_struct.update_tensor("rec.topk", self.top_hits(scores_tensor, positive_u, positive_i, pos_len))
        one_each = len(pairs) == n_cases and torch.equal(positive_u, torch.arange(n_cases, device=pairs.device))
        rows = scores_tensor if one_each else scores_tensor[positive_u]  # no copy when each case has one target
        ranks = target_ranks(rows, positive_i)
        pos_rank_sum = scores_tensor.new_zeros(n_cases).index_add_(0, positive_u, ranks.to(scores_tensor.dtype))
        candidates = counted_above(scores_tensor, scores_tensor.amin(dim=1, keepdim=True))
        mean_rank = torch.stack((pos_rank_sum.float(), candidates.float(), pos_len.float()), dim=1)
        self.data_struct.update_tensor("rec.meanrank", mean_rank)

    def top_hits(self, scores, positive_u, positive_i, pos_len):
        """RecBole's ``rec.topk``: for each case, whether each of its max(topk) best items (torch.topk's order,
        as RecBole's) is one of its targets, then its number of targets."""
        _, top = torch.topk(scores, max(self.topk), dim=-1)
        hits = torch.zeros_like(top).index_add_(0, positive_u, (top[positive_u] == positive_i.unsqueeze(1)).long())
        return torch.cat((hits, pos_len.unsqueeze(1)), dim=1)

    def get_data_struct(self):
        """RecBole's struct of the evaluation that ended, also kept as ``last_struct``."""
        self.last_struct = super().get_data_struct()
        return self.last_struct


def case_subset(struct, keep):
    """The DataStruct of the cases where ``keep`` [N] bool is True (the other keys as they are)."""
    subset = DataStruct()
    for key, value in struct._data_dict.items():
        subset.set(key, value[keep] if key in CASE_KEYS else value)
    return subset


@dataclass
class SplitResult:
    """One scoring pass over a split's cases: RecBole's metrics of all of them and of the filtered
    ones, and per case (in the loader's order) the target's rank and rating and the user."""

    metrics: dict
    filtered_metrics: dict
    rank: np.ndarray
    rating: np.ndarray
    user_id: np.ndarray
    keep: np.ndarray

    def per_case(self, prefix):
        """The per-case arrays as ``{prefix}_rank`` etc. (for a results ``.npz``)."""
        return {f"{prefix}_{name}": getattr(self, name) for name in ("user_id", "rating", "rank", "keep")}


def plain_metrics(result):
    """RecBole's metric dict with plain floats (numpy 2 prints its scalars as ``np.float64(...)``)."""
    return {key: float(value) for key, value in result.items()}


def evaluate_cases(evaluator, struct, metrics, loader, config, phase):
    """A :class:`SplitResult` from the collected ``struct`` of ``loader``'s cases and their ``metrics``
    (RecBole's, of all of them): the filtered cases are those whose held-out item was rated >=
    ``eval_rating_threshold`` (all cases when ``~``)."""
    dataset = loader._dataset
    keep = rating_filter(config, loader, phase)
    keep = np.ones(len(dataset), dtype=bool) if keep is None else keep.numpy()
    rating_field = config["RATING_FIELD"]
    if rating_field in dataset.inter_feat:
        rating = dataset.inter_feat[rating_field].numpy().astype(float)
    else:
        rating = np.full(len(dataset), np.nan)
    metrics = plain_metrics(metrics)
    filtered = metrics if keep.all() else plain_metrics(evaluator.evaluate(case_subset(struct, torch.from_numpy(keep))))
    uid_field = config["USER_ID_FIELD"]
    user_id = dataset.id2token(uid_field, dataset.inter_feat[uid_field].numpy()).astype(str)
    mean_rank = struct.get("rec.meanrank")
    return SplitResult(metrics, filtered, (mean_rank[:, 0] / mean_rank[:, 2]).numpy(), rating, user_id, keep)
