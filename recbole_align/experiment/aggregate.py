"""Aggregation: per row, the mean ± std over seeds of the finished runs at the final or the best epoch,
the tuning choice, and the paired bootstrap comparisons from the per-case results."""

from pathlib import Path

import numpy as np
import pandas as pd

from recbole_align.config import command_line_overrides
from recbole_align.data import EVAL_SPLITS
from recbole_align.errors import AlignError
from recbole_align.evaluator.paired import case_metric, case_ratings, holm, paired_difference, read_cases
from recbole_align.experiment.methods import NAMED_ROWS, all_rows, grid
from recbole_align.report import COLUMNS, COST_KEYS, markdown_table


def tuning_choice(trials):
    """{label: the settings of its trial with the highest filtered valid NDCG@10 (at its best epoch)}
    among the finished ``trials`` (the first on ties)."""
    chosen = {}
    for label in dict.fromkeys(t.label for t in trials if t.label != "BC"):
        finished = [t for t in trials if t.label == label and t.results is not None]
        if finished:
            best = max(finished, key=lambda t: t.results["valid_filtered"]["ndcg@10"])
            chosen[label] = {key: best.settings[key] for key in grid(label)[0]}
    return chosen


def chosen_in(tuning_csv):
    """{label: settings} of the trials marked chosen in ``tuning_csv`` (the tuning.csv of another benchmark,
    as :func:`tuning_table` writes it), each value typed as a ``--key=value`` of the command line."""
    try:
        table = pd.read_csv(tuning_csv, dtype=str, keep_default_na=False)
        chosen_rows = table[table["chosen"] == "yes"]
        pairs = {row["Method"]: dict(part.split("=", 1) for part in row["trial"].split(", ")) for _, row in chosen_rows.iterrows()}
    except (OSError, KeyError, ValueError, pd.errors.ParserError) as error:
        raise AlignError(f"--tuned_from [{tuning_csv}] is not a benchmark's tuning.csv ({error}).") from None
    if not pairs:
        raise AlignError(f"--tuned_from [{tuning_csv}] marks no trial as chosen.")
    return {label: command_line_overrides([f"--{key}={value}" for key, value in settings.items()])
            for label, settings in pairs.items()}


def tuning_table(trials, chosen):
    """(markdown, csv header, csv rows): every trial's settings and filtered valid NDCG@10 at its
    best and its final epoch, the chosen one marked."""
    header = ["Method", "trial", "valid NDCG@10 (best epoch)", "best epoch", "valid NDCG@10 (final epoch)", "chosen"]
    rows = []
    for trial in trials:
        if trial.label == "BC" or trial.results is None:
            continue
        keys = grid(trial.label)[0]
        setting = ", ".join(f"{key}={trial.settings[key]}" for key in keys)
        log = trial.results["epoch_log"]
        final = log[-1]["valid_filtered"]["ndcg@10"] if log and "valid_filtered" in log[-1] else None
        is_chosen = chosen.get(trial.label) == {key: trial.settings[key] for key in keys}
        rows.append([trial.label, setting, trial.results["valid_filtered"]["ndcg@10"], trial.results["best_epoch"],
                     final if final is not None else "n/a", "yes" if is_chosen else ""])
    return markdown_table(header, rows), header, rows


def mean_std(values):
    """(mean, std over seeds; 0 for one seed) of the non-None values, or None if there are none."""
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else None


def metrics_at(results, split, view):
    """The metrics of ``split`` at the run's best epoch (``view`` "best": its saved checkpoint, model
    selection on the filtered valid cases) or at the last epoch of its budget ("final"; from the
    per-epoch log, or the best epoch's when that was the last); None when the run did not log them."""
    if view == "best":
        return results[split]
    last = results["epoch_log"][-1] if results["epoch_log"] else {}
    if split in last:
        return last[split]
    return results[split] if last and last["epoch"] == results["best_epoch"] else None


def aggregate(runs, split, view="best"):
    """{label: {column: (mean, std)}} over seeds of the finished runs: the metrics of ``split`` at
    ``view`` (:func:`metrics_at`), the epoch they come from, Avg Reward (best view only: it is
    measured on the saved checkpoint) and the costs."""
    by_label = {}
    for run in runs:
        if run.results is not None:
            by_label.setdefault(run.label, []).append(run.results)
    table = {}
    for label, results in by_label.items():
        at = [metrics_at(r, split, view) for r in results]
        row = {key: mean_std([m[key] if m is not None else None for m in at]) for _, key in COLUMNS}
        row["epoch"] = mean_std([r["epoch_log"][-1]["epoch"] if view == "final" and r["epoch_log"] else r["best_epoch"]
                                  for r in results])
        row["avg_reward"] = mean_std([r.get("avg_reward") for r in results]) if view == "best" else None
        for key in COST_KEYS:
            row[key] = mean_std([r[key] for r in results])
        row["stopped_early"] = sum(r["epochs_run"] is not None and r["epochs_run"] < r["config"]["epochs"] for r in results)
        row["seeds"] = len(results)
        table[label] = row
    return table


def result_row(results):
    """A flat row of a results dict: ``<split>/<metric>`` for every split (best epoch), the best and final
    epoch, ``final_valid_filtered/<metric>``, ``final_test_filtered/<metric>`` (when logged), Avg Reward
    and the costs."""
    row = {f"{split}/{metric}": value for split in EVAL_SPLITS for metric, value in results[split].items()}
    log = results["epoch_log"]
    row["best_epoch"] = results["best_epoch"]
    row["final_epoch"] = log[-1]["epoch"] if log else None
    for split in ("valid_filtered", "test_filtered"):
        final = metrics_at(results, split, "final") or {}
        row.update({f"final_{split}/{metric}": final.get(metric) for metric in results[split]})
    row["avg_reward"] = results.get("avg_reward")
    row.update({key: results[key] for key in COST_KEYS})
    return row


def run_record(run):
    """One row of runs.csv: the run's label, model, seed, settings of the benchmark, result_row and
    ``record``: "older" for a run reused although recorded before runs recorded their identity, else "identity"."""
    settings = {key: value for key, value in run.settings.items() if key not in ("seed", "checkpoint_file", "pretrained_checkpoint")}
    return {"run": run.label, "model": run.model, "seed": run.seed, **settings, **result_row(run.results),
            "results_file": str(run.results_file), "checkpoint": run.results["checkpoint"],
            "record": "older" if run.older else "identity"}


def table3(runs, split, view, labels):
    """Table 3 rows of ``split`` at ``view`` (without the λ sweep), with the epoch column; BC's row is
    always its best epoch, the checkpoint that every method starts from."""
    rows = {**aggregate(runs, split, view), **{k: v for k, v in aggregate(runs, split).items() if k == "BC"}}
    return {label: rows[label] for label in labels if label in rows}


def comparisons(runs, labels):
    """The paired comparisons (A, B) of the rows ``labels``: every post-training row against BC and against
    every "more training" control in the table (the ContinuedBC rows: the one trained with the row's own
    settings, e.g. ``ContinuedBC exact`` for ``ExpRSFT exact``, and the others, e.g. the strongest control
    for the sampled row), every named row against its method's own row (ExpRSFT exact vs ExpRSFT), and every
    Exp-RSFT row against every RSFT row of the same ``loss_type`` and ``reward_scope`` (the rows' models in
    ``runs``)."""
    model = {run.label: run.model for run in runs}
    rows = all_rows()
    settings = {label: rows[label][2] if label in rows else {} for label in labels}
    post = [label for label in labels if label != "BC"]
    controls = [label for label in post if model.get(label) == "ContinuedBC"]
    pairs = [(label, "BC") for label in post]
    pairs += [(label, control) for label in post if model.get(label) != "ContinuedBC" for control in controls]
    pairs += [(label, model[label]) for label in post if label in NAMED_ROWS and model[label] in labels]
    alike = ("loss_type", "reward_scope")
    pairs += [(a, b) for a in labels if model.get(a) == "ExpRSFT" for b in labels if model.get(b) == "RSFT"
              and all(settings[a].get(key) == settings[b].get(key) for key in alike)]
    return pairs


def case_files(runs, labels):
    """{(label, seed): the per-case results file} of the finished runs of ``labels``; a finished run without
    its per-case results is an error that names it."""
    cases = {}
    for run in (r for r in runs if r.results is not None and r.label in labels):
        path = run.results.get("cases_file")
        if not path or not Path(path).is_file():
            raise AlignError(f"{run.label} seed {run.seed} has no per-case results ({path or 'none recorded'}; "
                             f"{run.results_file}): train it again to compare it.")
        cases[run.label, run.seed] = path
    return cases


def paired_ranks(cases, a, b, view, **selection):
    """(seeds both rows finished, {label: one rank Series per seed}) of rows ``a`` and ``b`` at ``view`` (BC
    always at its best epoch, the starting checkpoint); ``selection``: :func:`read_cases`'s filtered, rating."""
    seeds = sorted(seed for label, seed in cases if label == a and (b, seed) in cases)
    return seeds, {label: [read_cases(cases[label, seed], view="best" if label == "BC" else view, **selection)
                           for seed in seeds] for label in (a, b)}


def paired_tables(runs, labels, view, metrics=("ndcg@10", "hit@10"), filtered=True):
    """(markdown, records) of the paired comparisons (:func:`comparisons`) on the rating-filtered test cases
    (``filtered``; else on all of them) at ``view`` (``final`` or ``best``; BC always at its best epoch, the
    starting checkpoint), pooled over the seeds that both rows finished: the difference in points (x 100) and in
    % of B, its 95% interval counting seeds and cases, its p-value raw and Holm-adjusted over the table (bold:
    significant after adjustment), the case-only bootstrap interval, and each seed's; None when no run finished."""
    cases = case_files(runs, labels)
    results = []
    for a, b in comparisons(runs, labels):
        seeds, ranks = paired_ranks(cases, a, b, view, filtered=filtered)
        if not seeds:
            continue
        for metric in metrics:
            pooled = paired_difference(ranks[a], ranks[b], metric, names=(a, b))
            per_seed = [paired_difference([x], [y], metric, names=(a, b)) for x, y in zip(ranks[a], ranks[b])]
            results.append((a, b, metric, seeds, pooled, per_seed))
    if not results:
        return None
    adjusted = holm([pooled["p"] for *_, pooled, _ in results])
    rows, records = [], []
    for (a, b, metric, seeds, pooled, per_seed), p_holm in zip(results, adjusted):
        pooled = {**pooled, "p_holm": p_holm, "significant_holm": bool(p_holm < 0.05)}
        records += [{"a": a, "b": b, "metric": metric, "seed": seed, **result}
                    for seed, result in [("pooled", pooled), *zip(seeds, per_seed)]]
        bold = "**" if pooled["significant_holm"] else ""
        rows.append({
            "A vs B": f"{bold}{a} vs {b}{bold}", "metric": metric, "A": f"{pooled['mean_a']:.4f}", "B": f"{pooled['mean_b']:.4f}",
            "difference, points (%)": f"{bold}{100 * pooled['difference']:+.2f} ({100 * pooled['relative']:+.1f}%){bold}",
            "95% CI, points (seeds and cases)": f"[{100 * pooled['low']:+.2f}, {100 * pooled['high']:+.2f}]",
            "p": f"{pooled['p']:.3g}", "p (Holm)": f"{p_holm:.3g}",
            "case-only 95% CI": f"[{100 * pooled['case_low']:+.2f}, {100 * pooled['case_high']:+.2f}]",
            "per seed, points [case-only CI]": "; ".join(
                f"{100 * r['difference']:+.2f} [{100 * r['case_low']:+.2f}, {100 * r['case_high']:+.2f}]" for r in per_seed),
        })
    return pd.DataFrame(rows).to_markdown(index=False), records


def rating_breakdown(runs, labels, view, metric="ndcg@10"):
    """(markdown, records) of each post-training row's difference from BC on the test cases whose held-out item
    got each rating (all ratings, not only the filtered ones: where a method gains and where it loses), at
    ``view``, pooled over the seeds, with the interval counting seeds and cases and Holm's adjustment over the
    table (bold: significant after it); None when no row has a finished run beside BC's."""
    cases = case_files(runs, labels)
    bc_files = [path for (label, _), path in cases.items() if label == "BC"]
    if not bc_files:
        return None
    ratings = case_ratings(bc_files[0])
    results = []
    for label in (label for label in labels if label != "BC"):
        for rating in ratings:
            seeds, ranks = paired_ranks(cases, label, "BC", view, filtered=False, rating=rating)
            if seeds and len(ranks["BC"][0]) > 1:
                results.append((label, rating, paired_difference(ranks[label], ranks["BC"], metric, names=(label, "BC"))))
    if not results:
        return None
    adjusted = holm([result["p"] for *_, result in results])
    records = [{"row": label, "rating": rating, "metric": metric, **result, "p_holm": p_holm,
                "significant_holm": bool(p_holm < 0.05)} for (label, rating, result), p_holm in zip(results, adjusted)]
    counts = {record["rating"]: record["cases"] for record in records}
    table = {f"{rating:g}": {"cases": f"{counts[rating]}"} for rating in ratings if rating in counts}
    for record in records:
        bold = "**" if record["significant_holm"] else ""
        table[f"{record['rating']:g}"][record["row"]] = (
            f"{bold}{100 * record['difference']:+.2f}{bold} [{100 * record['low']:+.2f}, {100 * record['high']:+.2f}]")
    frame = pd.DataFrame(table).rename_axis("rating of the held-out item").fillna("")
    return frame.to_markdown(), records


def trade_off(runs, labels, view="final", metric="ndcg@10"):
    """{label: ((mean, std) over seeds of ``metric`` on all the test cases, (mean, std) on the rating-filtered
    ones)} of the rows ``labels`` at ``view`` (BC at its best epoch), from the per-case results: how much of the
    catalogue's accuracy a row gives up for the highly rated cases."""
    cases = case_files(runs, labels)
    points = {}
    for label in labels:
        files = [path for (row, _), path in sorted(cases.items()) if row == label]
        if files:
            at = "best" if label == "BC" else view
            means = [[case_metric(read_cases(path, view=at, filtered=filtered), metric).mean() for path in files]
                     for filtered in (False, True)]
            points[label] = tuple(mean_std(values) for values in means)
    return points
