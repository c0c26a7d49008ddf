"""Paired comparisons of two runs on the same cases, from their per-case results (``<results>.cases.npz``).

Each case's metric comes from its rank r (the held-out item's rank in the full ranking, history
excluded, ties averaged; see :func:`recbole_align.quick_start.write_cases`):

    NDCG@K = 1[r <= K] / log2(r + 1),   HR@K = 1[r <= K],   MRR = 1 / r,

whose means over the cases are RecBole's NDCG@K, Hit@K and the full MRR (up to ties in the scores).
Two runs are compared by the paired bootstrap: the mean of the per-case differences, and its
confidence interval from resampling the cases (scipy's ``bootstrap``, ``paired=True``); over several
seeds, the per-case differences are first averaged over the seeds, so the cases are resampled once.
"""

import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from recbole_align.errors import AlignError


def case_metric(rank, metric):
    """The per-case value of ``metric`` (``ndcg@K``, ``hit@K`` or ``mrr``) from ranks: [N] -> [N]."""
    rank = np.asarray(rank, dtype=float)
    if metric == "mrr":
        return 1.0 / rank
    match = re.fullmatch(r"(ndcg|hit)@(\d+)", metric)
    if match is None:
        raise AlignError(f"a per-case metric is ndcg@K, hit@K or mrr, got {metric!r}.")
    cutoff = int(match.group(2))
    if match.group(1) == "hit":
        return (rank <= cutoff).astype(float)
    return np.where(rank <= cutoff, 1.0 / np.log2(rank + 1.0), 0.0)


def read_cases(path, split="test", view="best", filtered=True):
    """The ranks of a run's cases of ``split`` (``valid`` or ``test``) as a Series indexed by user id:
    those of the best checkpoint (``view="best"``) or of the model at the end of training
    (``"final"``), all cases or only the rating-filtered ones."""
    with np.load(Path(path)) as cases:
        rank = cases[f"{split}_rank" if view == "best" else f"{split}_rank_final"]
        frame = pd.Series(rank, index=pd.Index(cases[f"{split}_user_id"], name="user_id"), name="rank")
        if filtered:
            frame = frame[cases[f"{split}_keep"]]
    return frame


def paired_difference(ranks_a, ranks_b, metric="ndcg@10", confidence=0.95, n_resamples=10_000, seed=0):
    """Paired comparison of run(s) A against run(s) B on the same cases.

    ``ranks_a``, ``ranks_b``: one rank Series per seed each (:func:`read_cases`), paired seed by seed;
    each pair must hold the same cases. d_i = mean over seeds of (metric_A(i) - metric_B(i)); returns
    {"mean_a", "mean_b": the metric's means, "difference": mean_i d_i, "relative": difference / b, "low", "high":
    the paired bootstrap percentile interval of the difference at ``confidence``, "significant": the
    interval excludes 0, "cases": N, "seeds": S}.
    """
    if len(ranks_a) != len(ranks_b) or not ranks_a:
        raise AlignError("a paired comparison needs the same number (>= 1) of runs on each side.")
    values_a, values_b = [], []
    for a, b in zip(ranks_a, ranks_b):
        if not a.index.equals(b.index):
            raise AlignError("a paired comparison needs the same cases in both runs (same data and split).")
        values_a.append(case_metric(a.to_numpy(), metric))
        values_b.append(case_metric(b.to_numpy(), metric))
    mean_a, mean_b = np.mean(values_a, axis=0), np.mean(values_b, axis=0)
    difference = mean_a - mean_b
    interval = stats.bootstrap(
        (difference,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    base = mean_b.mean()
    return {
        "mean_a": mean_a.mean(), "mean_b": base, "difference": difference.mean(),
        "relative": difference.mean() / base if base else np.nan,
        "low": interval.low, "high": interval.high, "significant": bool(interval.low > 0 or interval.high < 0),
        "cases": len(difference), "seeds": len(values_a),
    }
