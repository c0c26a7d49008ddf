"""Paired comparisons of two runs on the same cases, from their per-case results (``<results>.cases.npz``).

Each case's metric comes from its rank r (the held-out item's rank in the full ranking, history
excluded, ties averaged; see :func:`recbole_align.quick_start.write_cases`):

    NDCG@K = 1[r <= K] / log2(r + 1),   HR@K = 1[r <= K],   MRR = 1 / r,

whose means over the cases are RecBole's NDCG@K, Hit@K and the full MRR (up to ties in the scores).

Two methods trained with S seeds are compared on N cases through x_si, the difference of the metric at case
i between their runs of seed s. Both the seeds and the cases are samples (another seed trains another BC
and another post-training run; other users give other cases), so the interval of the mean difference
counts both (:func:`seed_and_case_interval`): with d_s = mean_i x_si and x̄_i = mean_s x_si,

    SE^2 = var_s(d_s) / S + var_i(x̄_i) / N,

(the variance of a two-way random-effects mean; the two terms count the small residual twice, so the SE
errs on the wide side), and a t interval with the Welch-Satterthwaite degrees of freedom, which are about
S - 1 when the seeds dominate: with 3 seeds a seed-level t, not a normal quantile. The case-only
bootstrap (scipy's ``bootstrap``, ``paired=True``, over x̄_i) stays beside it, as each seed's interval: it
treats the trained models as fixed. Cases are matched by user id (one test case per user in leave-one-out)
across methods and seeds; a mismatch is an error. The p-values of a table's comparisons are adjusted by
Holm's step-down method (:func:`holm`), which controls the family-wise error without assuming
independence (the comparisons share BC and the control).
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


def read_cases(path, split="test", view="best", filtered=True, rating=None):
    """The ranks of a run's cases of ``split`` (``valid`` or ``test``) as a Series indexed by user id:
    those of the best checkpoint (``view="best"``) or of the model at the end of training
    (``"final"``), all cases or only the rating-filtered ones; with ``rating``, only (of those) the cases
    whose held-out item was rated ``rating``."""
    with np.load(Path(path)) as cases:
        rank = cases[f"{split}_rank" if view == "best" else f"{split}_rank_final"]
        frame = pd.Series(rank, index=pd.Index(cases[f"{split}_user_id"], name="user_id"), name="rank")
        keep = cases[f"{split}_keep"] if filtered else np.ones(len(rank), dtype=bool)
        if rating is not None:
            keep = keep & (cases[f"{split}_rating"] == rating)
    return frame[keep]


def case_ratings(path, split="test"):
    """The distinct ratings of the held-out items of a run's cases of ``split``, ascending."""
    with np.load(Path(path)) as cases:
        return [float(r) for r in np.unique(cases[f"{split}_rating"])]


def case_differences(ranks_a, ranks_b, metric, names=("A", "B")):
    """The per-case differences x_si of ``metric`` [S, N] and the two sides' metrics, with every seed's cases
    matched by user id to the first seed's of A: ``ranks_a``, ``ranks_b``: one rank Series per seed each
    (:func:`read_cases`), paired seed by seed. ``names``: the two sides, for the error of a mismatch."""
    if len(ranks_a) != len(ranks_b) or not ranks_a:
        raise AlignError("a paired comparison needs the same number (>= 1) of runs on each side.")
    users = ranks_a[0].index
    values = {0: [], 1: []}
    for seed, pair in enumerate(zip(ranks_a, ranks_b)):
        for side, ranks in enumerate(pair):
            if ranks.index.has_duplicates or len(ranks.index) != len(users) or not ranks.index.isin(users).all():
                raise AlignError(f"a paired comparison needs the same cases in every run (same data and split): run "
                                 f"{seed + 1} of {names[side]} has other cases than run 1 of {names[0]}.")
            values[side].append(case_metric(ranks.reindex(users).to_numpy(), metric))
    metric_a, metric_b = np.array(values[0]), np.array(values[1])
    return metric_a - metric_b, metric_a, metric_b


def seed_and_case_interval(differences, confidence=0.95):
    """(SE, degrees of freedom, low, high, two-sided p of no difference) of the mean of ``differences`` [S, N]
    (seed s, case i), counting seed and case variation (module docstring); with one seed, the case variation only."""
    seeds, cases = differences.shape
    seed_part = differences.mean(1).var(ddof=1) / seeds if seeds > 1 else 0.0
    case_part = differences.mean(0).var(ddof=1) / cases
    variance = seed_part + case_part
    mean = differences.mean()
    if variance == 0:  # every case and seed the same difference
        return 0.0, np.inf, mean, mean, 1.0 if mean == 0 else 0.0
    dof = variance**2 / ((seed_part**2 / (seeds - 1) if seeds > 1 else 0.0) + case_part**2 / (cases - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * np.sqrt(variance)
    p_value = 2 * stats.t.sf(abs(mean) / np.sqrt(variance), dof)
    return float(np.sqrt(variance)), float(dof), mean - half, mean + half, float(p_value)


def paired_difference(ranks_a, ranks_b, metric="ndcg@10", confidence=0.95, n_resamples=10_000, seed=0, names=("A", "B")):
    """Paired comparison of run(s) A against run(s) B on the same cases (module docstring).

    Returns {"mean_a", "mean_b": the metric's means, "difference": the mean of x_si, "relative": difference / b,
    "low", "high", "se", "dof", "p": the interval counting seeds and cases (:func:`seed_and_case_interval`),
    "significant": it excludes 0, "case_low", "case_high": the case-only paired bootstrap percentile interval,
    "cases": N, "seeds": S}."""
    differences, metric_a, metric_b = case_differences(ranks_a, ranks_b, metric, names)
    se, dof, low, high, p_value = seed_and_case_interval(differences, confidence)
    case_interval = stats.bootstrap(
        (differences.mean(0),), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
        random_state=np.random.default_rng(seed),
    ).confidence_interval
    base = metric_b.mean()
    difference = differences.mean()
    return {
        "mean_a": metric_a.mean(), "mean_b": base, "difference": difference,
        "relative": difference / base if base else np.nan, "low": low, "high": high, "se": se, "dof": dof, "p": p_value,
        "significant": bool(low > 0 or high < 0), "case_low": case_interval.low, "case_high": case_interval.high,
        "cases": differences.shape[1], "seeds": differences.shape[0],
    }


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values: the k-th smallest becomes max_{j<=k} min(1, (m - j + 1) p_(j)),
    in the given order."""
    p_values = np.asarray(p_values, dtype=float)
    order = np.argsort(p_values)
    adjusted = np.minimum(1.0, np.maximum.accumulate((len(p_values) - np.arange(len(p_values))) * p_values[order]))
    result = np.empty_like(adjusted)
    result[order] = adjusted
    return result
