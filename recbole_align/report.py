"""Tables, CSV files and plots of the experiment harness (:mod:`recbole_align.benchmark`) and the
diagnostics: markdown through pandas' ``to_markdown``, CSV through ``to_csv``, plots through
matplotlib (drawn to files only); every file written atomically (:mod:`recbole_align.safe_write`)."""

from pathlib import Path

import numpy as np
import pandas as pd

from recbole_align.safe_write import written_atomically

COLUMNS = (("NDCG@10", "ndcg@10"), ("NDCG@50", "ndcg@50"), ("HR@10", "hit@10"), ("HR@50", "hit@50"), ("MRR", "mrr"))
COST_KEYS = ("seconds_per_epoch", "epochs_run", "train_seconds", "peak_memory_mb")
PLAIN_COLUMNS = ("epoch",)  # counts, not scores: no bold, no % change
EPOCH_KEYS = ("epoch", "train_loss", "train_seconds")  # every trainer's epoch log; the rest is the method's own


def markdown_table(header, rows):
    """A markdown table of ``rows`` under ``header`` (pandas' ``to_markdown``); floats with 4 decimals,
    every other cell as written."""
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    frame = pd.DataFrame([[cell(v) for v in row] for row in rows], columns=list(header))
    return frame.to_markdown(index=False, disable_numparse=True)


def write_table(path, header, rows):
    """``rows`` as a CSV file with ``header``."""
    write_csv(path, pd.DataFrame(rows, columns=list(header)))


def write_records(path, records):
    """Dicts as a CSV file; columns in first-seen order, blank where a record has no value."""
    write_csv(path, pd.DataFrame.from_records(records))


def write_csv(path, frame):
    """``frame`` as the CSV file ``path`` (no index), atomically."""
    with written_atomically(path) as temporary:
        frame.to_csv(temporary, index=False)


def format_table(rows, columns, base="BC", bold_best=True, first="Method"):
    """Markdown: one row per label with "mean ± std" per column (with more than one seed), the % change
    of the mean from ``base``'s and, with ``bold_best``, the highest mean of each column in bold
    (neither for PLAIN_COLUMNS, shown with one decimal).
    ``rows``: {label: {key: (mean, std) or None, "seeds": n}}; ``columns``: [(header, key)]."""
    best = {}
    for _, key in columns:
        means = [row[key][0] for row in rows.values() if row.get(key) is not None]
        best[key] = max(means) if means else None
    lines = []
    for label, row in rows.items():
        cells = []
        for _, key in columns:
            if row.get(key) is None:
                cells.append("n/a")
                continue
            mean, std = row[key]
            if key in PLAIN_COLUMNS:
                cells.append(f"{mean:.1f}" + (f" ± {std:.1f}" if row.get("seeds", 1) > 1 else ""))
                continue
            text = f"{mean:.4f}" + (f" ± {std:.4f}" if row.get("seeds", 1) > 1 else "")
            if bold_best and mean == best[key]:
                text = f"**{text}**"
            base_value = rows.get(base, {}).get(key)
            if label != base and base_value is not None and base_value[0]:
                text += f" ({(mean - base_value[0]) / base_value[0] * 100:+.1f}%)"
            cells.append(text)
        lines.append([label, *cells])
    return markdown_table([first, *(header for header, _ in columns)], lines)


def cost_table(rows, base="BC"):
    """Seconds per epoch, epochs, training seconds and peak memory (means over seeds), each ÷ BC's, and
    how many seeds stopped early (converged: ``stopping_step`` epochs without a better valid score)
    rather than at the end of their budget; n/a where a row has no cost (BC given as a checkpoint)."""
    header = ["Method", "s/epoch", "epochs", "train s", "peak MB", "stopped early"]
    lines = []
    for label, row in rows.items():
        cells = []
        for key in COST_KEYS:
            if row.get(key) is None:
                cells.append("n/a")
                continue
            mean = row[key][0]
            base_mean = (rows.get(base, {}).get(key) or (None,))[0]
            ratio = f" ({mean / base_mean:.2f}x)" if label != base and base_mean else ""
            cells.append(f"{mean:.1f}{ratio}")
        lines.append([label, *cells, f"{row['stopped_early']}/{row['seeds']}"])
    return markdown_table(header, lines)


def csv_rows(rows, columns):
    """Flat CSV rows: label, seeds, then <key>_mean and <key>_std of every column."""
    out = []
    for label, row in rows.items():
        flat = [label, row["seeds"]]
        for key in columns:
            flat += list(row[key]) if row.get(key) is not None else ["", ""]
        out.append(flat)
    return ["method", "seeds", *(f"{key}_{s}" for key in columns for s in ("mean", "std"))], out


def trace_table(label, seed, results):
    """One run's epochs: filtered valid NDCG@10 and the statistics its trainer logged (its numbers beyond
    EPOCH_KEYS, e.g. Exp-RSFT's mean weight, PPO's KL to BC)."""
    log = results["epoch_log"]
    keys = [key for key, value in (log[0].items() if log else ()) if key not in EPOCH_KEYS and isinstance(value, (int, float))]
    rows = [[e["epoch"], e["valid_filtered"]["ndcg@10"], *(e[k] for k in keys)] for e in log]
    return f"{label} per epoch (seed {seed}):\n\n" + markdown_table(["epoch", "valid NDCG@10 (filtered)", *keys], rows)


def pyplot():
    """matplotlib's pyplot, drawing to files only (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(plt, fig, path):
    """``fig`` as the image file ``path`` (its format from the suffix), atomically; then closed."""
    with written_atomically(path) as temporary:
        fig.savefig(temporary, dpi=120, format=Path(path).suffix[1:])
    plt.close(fig)


COLLAPSED = 0.5  # a curve that ends below this fraction of BC's value is drawn under the axis, not scaled into it


def plot_epochs(runs, labels, path, title, xlabel="post-training epoch", curve_of_bc=False):
    """NDCG@10 on the rating-filtered valid (left) and test (right) cases after every epoch of each of
    ``labels``, the mean over seeds with a band of ± one standard deviation: the paper's Figure 2 for the
    post-training methods, with BC's best epoch as a dashed line; with ``curve_of_bc``, BC's own training
    curve instead (beside the baselines' training curves). A row that collapses (ends below COLLAPSED x BC)
    keeps its line but not the axis: its final value is in its legend, so that the others stay readable.
    ``runs``: objects with ``label`` and ``results`` (None if unfinished)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), sharex=True)
    for ax, split in zip(axes, ("valid_filtered", "test_filtered")):
        curves = {}
        for run in runs:
            if run.label in labels and run.results is not None and run.results["epoch_log"]:
                trace = [e[split]["ndcg@10"] for e in run.results["epoch_log"] if split in e]
                if trace:
                    curves.setdefault(run.label, []).append(trace)
        bc = [r.results for r in runs if r.label == "BC" and r.results is not None]
        bc_value = np.mean([r[split]["ndcg@10"] for r in bc]) if bc else None
        shown = []  # the (low, high) of the curves the axis is scaled to
        for label, traces in curves.items():
            if label == "BC" and not curve_of_bc:
                continue
            length = min(len(t) for t in traces)
            values = np.array([t[:length] for t in traces])
            mean, std = values.mean(0), values.std(0)
            collapsed = bc_value is not None and not curve_of_bc and mean[-1] < COLLAPSED * bc_value
            name = f"{label} (collapsed: {mean[-1]:.3f} at the end)" if collapsed else label
            epochs = range(1, length + 1)
            line, = ax.plot(epochs, mean, "o-", markersize=3, label=name)
            if len(traces) > 1:
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
            if not collapsed:
                shown.append(((mean - std).min(), (mean + std).max()))
        if bc and not curve_of_bc:
            ax.axhline(bc_value, color="grey", linestyle="--", label="BC (best epoch)")
            shown.append((bc_value, bc_value))
        if shown:
            low, high = min(s[0] for s in shown), max(s[1] for s in shown)
            margin = 0.05 * (high - low) or 0.01
            ax.set_ylim(low - margin, high + margin)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{split.split('_')[0]} NDCG@10 (rating >= threshold)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)  # below: the curves stay clear
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(plt, fig, path)


def draw_curves(ax, curves, baseline=None):
    """Onto ``ax``: filtered test NDCG@10 (mean ± std over seeds) against x, one line per curve, with
    ``baseline`` (BC's (mean, std)) as a dashed line. ``curves``: {name: [(x, (mean, std))]}."""
    for name, points in curves.items():
        ax.errorbar([p[0] for p in points], [p[1][0] for p in points], yerr=[p[1][1] for p in points], fmt="o-",
                    capsize=3, label=name)
    if baseline is not None:
        ax.axhline(baseline[0], color="grey", linestyle="--", label="BC")
    ax.set_ylabel("test NDCG@10 (rating >= threshold)")
    ax.legend(fontsize=8)


def draw_against_lambda(ax, curves, baseline=None):
    """:func:`draw_curves` against λ on a log axis. ``curves``: {name: [(λ, (mean, std))]}."""
    draw_curves(ax, curves, baseline)
    lambdas = sorted({lam for points in curves.values() for lam, _ in points})
    ax.set_xscale("log")
    ax.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas])
    ax.minorticks_off()
    ax.set_xlabel("λ")


def plot_against_lambda(curves, path, title, baseline=None):
    """:func:`draw_against_lambda` as a figure of its own (the paper's Figure 3)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    draw_against_lambda(ax, curves, baseline)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(plt, fig, path)


def plot_noise_sweep(curves, against_noise, path, title, baseline=None):
    """The reward-noise sweep: Exp-RSFT's filtered test NDCG@10 against λ, one line per noise level
    (left; ``curves`` as for :func:`draw_against_lambda`), and every method's against the noise std σ
    (right; ``against_noise``: {name: [(σ, (mean, std))]}), BC dashed in both."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    draw_against_lambda(left, curves, baseline)
    left.set_title("Exp-RSFT at each noise level")
    draw_curves(right, against_noise, baseline)
    right.set_xlabel("σ, std of the noise added to the training ratings")
    right.set_title("every method against the noise")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(plt, fig, path)


def plot_rating_breakdown(records, path, title):
    """Each row's difference from BC in NDCG@10 points (bars, with their 95% intervals counting seeds and cases)
    on the test cases of each rating of the held-out item, one panel per view. ``records``: {view title:
    :func:`~recbole_align.experiment.aggregate.rating_breakdown`'s records}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(records), figsize=(5.5 * len(records), 4.2), sharey=True, squeeze=False)
    for ax, (view, rows) in zip(axes[0], records.items()):
        frame = pd.DataFrame(rows)
        ratings, labels = sorted(frame.rating.unique()), list(dict.fromkeys(frame.row))
        width = 0.8 / len(labels)
        for k, label in enumerate(labels):
            part = frame[frame.row == label].set_index("rating").reindex(ratings)
            x = np.arange(len(ratings)) + (k - (len(labels) - 1) / 2) * width
            error = [100 * (part.difference - part.low), 100 * (part.high - part.difference)]
            ax.bar(x, 100 * part.difference, width, yerr=error, capsize=2, label=label)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(np.arange(len(ratings)), [f"{r:g}\n({int(frame[frame.rating == r].cases.iloc[0])})" for r in ratings])
        ax.set_xlabel("rating of the held-out item (cases)")
        ax.set_title(view)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("difference from BC, NDCG@10 points")
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(plt, fig, path)


def plot_trade_off(points, path, title, metric="NDCG@10"):
    """Each row's ``metric`` on the rating-filtered test cases against all of them (mean ± std over seeds): the
    accuracy a row gives up for the highly rated cases. ``points``: {label: ((all mean, std), (filtered mean, std))}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for label, ((x, x_std), (y, y_std)) in points.items():
        ax.errorbar(x, y, xerr=x_std, yerr=y_std, fmt="s" if label == "BC" else "o", capsize=3, label=label)
    ax.set_xlabel(f"{metric}, all test cases")
    ax.set_ylabel(f"{metric}, test cases rated >= threshold")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(plt, fig, path)
