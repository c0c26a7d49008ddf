"""The benchmark's report: table.md (Table 3 at the final and best epoch, unfiltered metrics, Table 2,
paired differences, costs, the sweeps, tuning, traces), the CSV files and the plots."""

import os
import platform
from pathlib import Path

import torch

from recbole_align.diagnostics import PREDICTORS, run_diagnostics
from recbole_align.errors import AlignError
from recbole_align.experiment.aggregate import (
    aggregate, mean_std, paired_tables, rating_breakdown, run_record, table3, trade_off, tuning_table,
)
from recbole_align.experiment.methods import SHARED_GRID, grid
from recbole_align.experiment.plan import BC_PLATEAU, NOISE_METHODS, bc_checkpoint_of, kind, lambda_label, noise_label
from recbole_align.pretrained import read_pretrained
from recbole_align.report import (
    COLUMNS, COST_KEYS, cost_table, csv_rows, format_table, markdown_table, plot_against_lambda, plot_epochs, plot_noise_sweep,
    plot_rating_breakdown, plot_trade_off, trace_table, write_records, write_table,
)
from recbole_align.safe_write import write_text


def reward_model_table(runs, dataset, output_dir, overrides, config_files=()):
    """Table 2 (MSE, MAE of the reward head and the naive predictors; mean ± std over the seeds' BC
    checkpoints, on the data of the runs' ``config_files`` and ``overrides``) as (markdown, csv header,
    csv rows), or None without a finished BC."""
    checkpoints = dict.fromkeys(bc_checkpoint_of(r.results) for r in runs if r.label == "BC" and r.results is not None)
    checkpoints = [c for c in checkpoints if Path(c).is_file()]  # a reused BC JSON may outlive its checkpoint
    checkpoints = [c for c in checkpoints if read_pretrained(c)["config"]["reward_head"]]
    if not checkpoints:
        return None
    errors = []
    for checkpoint in checkpoints:
        folder = output_dir / "diagnostics" / Path(checkpoint).stem
        errors.append(run_diagnostics(dataset, checkpoint, (), folder, overrides, config_files)["reward_model"])
    rows = {}
    for metric in ("MSE", "MAE"):
        rows[metric] = {name: mean_std([e[name][metric] for e in errors]) for name in PREDICTORS}
        rows[metric]["seeds"] = len(errors)
    header = ["metric", *(f"{name} {s}" for name in PREDICTORS for s in ("mean", "std"))]
    csv = [[metric, *(v for name in PREDICTORS for v in row[name])] for metric, row in rows.items()]
    columns = [(name, name) for name in PREDICTORS]
    return format_table(rows, columns, base=None, bold_best=False, first="Metric"), header, csv


def noise_section(runs, lambdas, noise_levels, output_dir, dataset):
    """The reward-noise sweep (Theorem 4.4's robustness-improvement trade-off of λ): per view (final
    epoch, best validation epoch) a table of filtered test NDCG@10 (mean ± std over seeds) per row
    (Exp-RSFT at each λ, RSFT, DRPO) and noise std σ, with the λ that the filtered test and valid
    NDCG@10 pick at each σ; writes noise_sweep.csv and noise_sweep.png (final epoch). Returns the
    markdown parts."""
    bases = [*(lambda_label(lam) for lam in lambdas), *(label for label, _, _ in NOISE_METHODS)]
    scores = {(view, split): aggregate(runs, split, view) for view in ("final", "best")
              for split in ("test_filtered", "valid_filtered")}

    def ndcg(view, split, base, sigma):
        row = scores[view, split].get(noise_label(base, sigma))
        return row["ndcg@10"] if row else None

    def picked_lambda(view, split, sigma):
        scored = [(ndcg(view, split, lambda_label(lam), sigma)[0], lam) for lam in lambdas
                  if ndcg(view, split, lambda_label(lam), sigma)]
        return max(scored)[1] if scored else None

    parts, records = [], []
    for view, heading in (("final", "at the final epoch of the budget"), ("best", "at the best validation epoch")):
        lines = [[base, *(f"{c[0]:.4f} ± {c[1]:.4f}" if c else "n/a"
                          for c in (ndcg(view, "test_filtered", base, sigma) for sigma in noise_levels))] for base in bases]
        for split in ("test_filtered", "valid_filtered"):
            picks = (picked_lambda(view, split, sigma) for sigma in noise_levels)
            lines.append([f"λ picked by {split.split('_')[0]} NDCG@10", *("n/a" if lam is None else f"{lam:g}" for lam in picks)])
        parts += [f"## Reward noise: filtered test NDCG@10 {heading}",
                  markdown_table(["Row", *(f"σ={sigma:g}" for sigma in noise_levels)], lines)]
        records += [{"view": view, "sigma": sigma, "row": base, "seeds": scores[view, "test_filtered"][noise_label(base, sigma)]["seeds"],
                     **{f"{split}/ndcg@10_{stat}": value for split in ("test_filtered", "valid_filtered")
                        for stat, value in zip(("mean", "std"), ndcg(view, split, base, sigma))}}
                    for base in bases for sigma in noise_levels if ndcg(view, "test_filtered", base, sigma)]
    write_records(output_dir / "noise_sweep.csv", records)

    curves = {f"σ={sigma:g}": [(lam, ndcg("final", "test_filtered", lambda_label(lam), sigma)) for lam in lambdas
                               if ndcg("final", "test_filtered", lambda_label(lam), sigma)] for sigma in noise_levels}
    picked = {sigma: picked_lambda("final", "valid_filtered", sigma) for sigma in noise_levels}
    against_noise = {"Exp-RSFT, λ picked on valid": [
        (sigma, ndcg("final", "test_filtered", lambda_label(lam), sigma)) for sigma, lam in picked.items() if lam is not None]}
    against_noise.update({m: [(sigma, ndcg("final", "test_filtered", m, sigma)) for sigma in noise_levels
                              if ndcg("final", "test_filtered", m, sigma)] for m, _, _ in NOISE_METHODS})
    bc = scores["best", "test_filtered"].get("BC", {}).get("ndcg@10")
    plot_noise_sweep(curves, against_noise, output_dir / "noise_sweep.png",
                     f"{dataset}: training ratings + N(0, σ²) noise (final epoch)", bc)
    return [*parts, "![reward-noise sweep: NDCG@10 against λ per σ, and against σ](noise_sweep.png)"]


def hardware():
    """One line: CPU model and cores, or the GPU; torch version."""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
        device = f"{os.cpu_count()}-core CPU {model}".strip()
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


REWARD_MODEL_NOTE = (
    "What the reward model sees: r̂(s, a) is the reward head on the BC backbone's state at the case; with HSTU "
    "that state is conditioned on the held-out item's timestamp (HSTU's target-aware time encoding, as the "
    "reference code); the user, item and global means are not given it. The head's offset is the mean of "
    "all training ratings, so at initialisation it is the Global Mean predictor."
)


def older_runs_note(runs):
    """[a paragraph naming the rows that rest on runs reused with ``--reuse_older_runs``], or []."""
    older = {}
    for run in runs:
        if run.older:
            older[run.label] = older.get(run.label, 0) + 1
    if not older:
        return []
    rows = ", ".join(f"{label} ({n} seed{'s' * (n > 1)})" for label, n in older.items())
    return [f"**Older runs**: {sum(older.values())} of {sum(r.results is not None for r in runs)} runs in these tables were "
            f"recorded before runs recorded their identity and were reused with `--reuse_older_runs`: their settings, the "
            f"package's defaults and the code were not checked against today's (their data files and start checkpoint "
            f"were, where recorded). Rows: {rows}. `runs.csv` marks each (`record`)."]


def given_choice_section(rows, given_choice, tuning_csv):
    """table.md's account of ``--tuned_from``: each post-training row's settings from ``tuning_csv``, or its
    yaml defaults where that benchmark chose none for it."""
    lines = [f"- {label}: " + (", ".join(f"{k}={v}" for k, v in given_choice[label].items()) if label in given_choice
                               else "no choice there, its yaml defaults") for label in rows]
    return [f"## Settings tuned on another benchmark (`--tuned_from {tuning_csv}`; no tuning here)", "\n".join(lines)]


def write_outputs(runs, args, labels, lambdas, output_dir, overrides, command, wall_seconds, tuning=None,
                  noise_levels=(), given_choice=None):
    """table.md, the CSV files and the plots from the finished runs; ``tuning``: (trials, chosen);
    ``given_choice``: {label: settings} taken from ``args.tuned_from``."""
    best = table3(runs, "test_filtered", "best", labels)
    if not best:
        raise AlignError("no run finished: nothing to tabulate (see the logs under runs/).")
    final = table3(runs, "test_filtered", "final", labels)
    reward_columns = [("Avg Reward", "avg_reward")] if any(r["avg_reward"] for r in best.values()) else []
    epoch_column = [("epoch", "epoch")]
    sample = next(r.results for r in runs if r.results is not None)
    seeds = sorted({r.seed for r in runs})
    budget = f"{args.epochs} post-training epochs (no early stopping), " + (
        f"BC the given checkpoint {args.pretrained_checkpoint}" if args.pretrained_checkpoint
        else f"BC {args.bc_epochs} epochs" if args.bc_epochs is not None
        else f"BC to its plateau (at most {BC_PLATEAU['epochs']} epochs, stopped after {BC_PLATEAU['stopping_step']} "
             f"without a better NDCG@10 on all the valid cases)")
    parts = [
        f"# Benchmark: {args.dataset}, backbone {args.backbone}, seeds {seeds}",
        f"Test cases rated >= {sample['eval_rating_threshold']}: {sample['n_test_filtered']} of {sample['n_test']}. "
        f"Budget: {budget}. Mean ± std over {len(seeds)} seed(s); % change from BC's mean; best mean per column "
        f"in bold; `epoch`: the (0-based) epoch the metrics come from. Avg Reward: the seed's BC reward head "
        f"scoring the policy's samples (saved checkpoint)."
        + (f" Baselines: RecBole's own training and early stopping, budget (epochs) {args.baseline_epochs}."
           if any(r.model == r.label and kind(r) == "baseline" for r in runs) else ""),
        *older_runs_note(runs),
        "## Table 3 at the final epoch of the budget (rating-filtered test cases)",
        "The paper's view: every method trained for the fixed budget. BC: its best epoch (the starting checkpoint).",
        format_table(final, [*COLUMNS, *epoch_column]),
        "## Table 3 at the best validation epoch (rating-filtered test cases)",
        "Model selection: each run's checkpoint with the best filtered valid NDCG@10.",
        format_table(best, [*COLUMNS, *reward_columns, *epoch_column]),
        "## Unfiltered test cases (best validation epoch)",
        format_table(table3(runs, "test", "best", labels), COLUMNS),
        "## Unfiltered test cases (final epoch)",
        format_table(table3(runs, "test", "final", labels), COLUMNS),
    ]
    keys = [key for _, key in COLUMNS]
    write_table(output_dir / "table.csv", *csv_rows(best, [*keys, "avg_reward", "epoch"]))
    write_table(output_dir / "table_final.csv", *csv_rows(final, [*keys, "epoch"]))
    write_table(output_dir / "unfiltered.csv", *csv_rows(aggregate(runs, "test"), keys))
    config_files = [str(Path(f).resolve()) for f in args.config_files.split()] if args.config_files else []
    table2 = reward_model_table(runs, args.dataset, output_dir, overrides, config_files)
    if table2 is not None:
        parts += ["## Reward model vs naive rating predictors (Table 2, test ratings)", REWARD_MODEL_NOTE, table2[0]]
        write_table(output_dir / "reward_model.csv", table2[1], table2[2])
    else:
        parts.append("Table 2 (reward model) not computed: no BC checkpoint of these runs with a reward head is on "
                     "disk (any more).")
    by_rating = {}
    for view, title in (("final", "the final epoch of the budget"), ("best", "the best validation epoch")):
        for filtered, cases, suffix in ((True, f"rating-filtered test cases, {sample['n_test_filtered']}", ""),
                                        (False, f"all test cases, {sample['n_test']}: the trade-off", "_all")):
            paired = paired_tables(runs, labels, view, filtered=filtered)
            if paired is None:
                continue
            parts += [f"## Paired differences at {title} ({cases})",
                      "A - B on these cases, pooled over the seeds both rows finished, in points "
                      "(x 100) and % of B; its 95% interval counts both the seeds and the cases (a t interval on "
                      "var_seeds/S + var_cases/N, Welch-Satterthwaite degrees of freedom: evaluator/paired.py) and its "
                      "p-value is given raw and Holm-adjusted over this table's comparisons; **bold**: significant after "
                      "adjustment. The case-only bootstrap interval (10,000 resamples; the trained models taken as fixed) "
                      "and each seed's difference are beside it. BC at its best epoch, the starting checkpoint.",
                      paired[0]]
            write_records(output_dir / f"paired_{view}{suffix}.csv", paired[1])
        breakdown = rating_breakdown(runs, labels, view)
        if breakdown is not None:
            parts += [f"## Difference from BC by the rating of the held-out item, at {title}",
                      "NDCG@10 points on all the test cases of each rating (their number in the first row), pooled "
                      "over the seeds, [95% interval counting seeds and cases]; Holm-adjusted over this table, "
                      "**bold**: significant after adjustment.", breakdown[0]]
            write_records(output_dir / f"by_rating_{view}.csv", breakdown[1])
            by_rating[title] = breakdown[1]
    if by_rating:
        plot_rating_breakdown(by_rating, output_dir / "by_rating.png", f"{args.dataset}: difference from BC by rating")
        parts.append("![difference from BC by the rating of the held-out item](by_rating.png)")
    costs = aggregate(runs, "test_filtered")
    write_table(output_dir / "cost.csv", *csv_rows(costs, COST_KEYS))
    parts += ["## Cost (means over seeds; ratio to BC)", cost_table(costs)]
    baselines = [label for label in labels if any(r.label == label and kind(r) == "baseline" for r in runs)]
    plot_epochs(runs, [label for label in labels if label not in baselines], output_dir / "epochs.png",
                f"{args.dataset}, backbone {args.backbone}")
    parts.append("![per-epoch filtered valid and test NDCG@10 (Figure 2)](epochs.png)")
    if baselines:
        plot_epochs(runs, ["BC", *baselines], output_dir / "baselines.png", f"{args.dataset}: training curves",
                    xlabel="training epoch", curve_of_bc=True)
        parts.append("![per-epoch filtered valid and test NDCG@10 of BC and the baselines](baselines.png)")
    if lambdas:
        sweep_rows = {run.label for run in runs if run.sweep_lambda is not None and not run.noise_std}
        sweep = {view: {**{k: v for k, v in best.items() if k == "BC"},
                        **{k: v for k, v in aggregate(runs, "test_filtered", view).items() if k in sweep_rows}}
                 for view in ("final", "best")}
        points = [(lam, sweep["final"][lambda_label(lam)]["ndcg@10"]) for lam in lambdas
                  if lambda_label(lam) in sweep["final"]]
        plot_against_lambda({"Exp-RSFT": points}, output_dir / "lambda_sweep.png",
                            f"Exp-RSFT λ sweep on {args.dataset} (final epoch)", sweep["final"].get("BC", {}).get("ndcg@10"))
        choice = ((tuning[1] if tuning else given_choice) or {}).get("ExpRSFT", {})
        chosen_keys = ", ".join(f"{key}={value}" for key, value in choice.items() if key != "reward_lambda")
        around = f" (at Exp-RSFT's chosen {chosen_keys})" if chosen_keys else ""
        parts += [f"## λ sweep (Figure 3), final epoch{around}",
                  format_table(sweep["final"], [*COLUMNS, *epoch_column]),
                  "![λ sweep](lambda_sweep.png)", "## λ sweep, best validation epoch",
                  format_table(sweep["best"], [*COLUMNS, *epoch_column])]
        model = {run.label: run.model for run in runs}
        rows = ["BC", *(label for model_name in ("ContinuedBC", "ExpRSFT") for label in labels if model.get(label) == model_name),
                *(lambda_label(lam) for lam in lambdas)]
        points = trade_off(runs, list(dict.fromkeys(rows)))
        plot_trade_off(points, output_dir / "lambda_trade_off.png", f"{args.dataset}: the λ trade-off (final epoch)")
        parts += ["## The λ trade-off: NDCG@10 on all test cases and on the rating-filtered ones (final epoch; BC at "
                  "its best), mean ± std over seeds, from the per-case results",
                  markdown_table(["Row", "all test cases", "rated >= threshold"],
                                 [[label, f"{x[0]:.4f} ± {x[1]:.4f}", f"{y[0]:.4f} ± {y[1]:.4f}"]
                                  for label, (x, y) in points.items()]),
                  "![the λ trade-off](lambda_trade_off.png)"]
        controls = [label for label in labels if model.get(label) == "ContinuedBC"]
        family = list(dict.fromkeys(["BC", *controls, *(lambda_label(lam) for lam in lambdas)]))
        for filtered, cases, suffix in ((True, "rating-filtered test cases", ""), (False, "all test cases", "_all")):
            paired = paired_tables(runs, family, "final", metrics=("ndcg@10",), filtered=filtered)
            if paired is not None:
                parts += [f"## The λ rows against BC and the control, final epoch ({cases}; intervals and Holm's "
                          "adjustment over this table as in the paired tables above)", paired[0]]
                write_records(output_dir / f"lambda_paired_final{suffix}.csv", paired[1])
    if noise_levels:
        parts += noise_section(runs, lambdas, noise_levels, output_dir, args.dataset)
    trials = []
    if tuning is not None:
        trials, chosen = tuning
        markdown, header, rows = tuning_table(trials, chosen)
        write_table(output_dir / "tuning.csv", header, rows)
        untuned = [label for label in dict.fromkeys(t.label for t in trials if t.label != "BC") if label not in chosen]
        counts = {label: len(grid(label)) for label in dict.fromkeys(t.label for t in trials if t.label != "BC")}
        most = max(counts.values(), default=0)
        fewer = "".join(f"; {label}: {n}, without the values its trainer refuses" for label, n in counts.items() if n < most)
        parts += [f"## Tuning (seed {seeds[0]}: {most} trials per row{fewer}; the same grid shape for all: "
                  f"{', '.join(f'{k} {v}' for k, v in SHARED_GRID.items())} and one key of the method; "
                  f"chosen on the filtered valid NDCG@10 at the best epoch)", markdown]
        if untuned:
            parts.append(f"No trial finished for {', '.join(untuned)}: those rows ran at their yaml defaults.")
    if given_choice is not None:
        parts += given_choice_section([label for label in labels if label != "BC" and label not in baselines],
                                      given_choice, args.tuned_from)
    failed = [f"- {r.label}, seed {r.seed}{tag}: {r.error}"
              for group, tag in ((trials, " (tuning trial)"), (runs, "")) for r in group if r.error]
    if failed:
        parts += ["## Failed runs (left out of the tables)", "\n".join(failed)]
    if args.trace:
        parts += ["## Per-epoch traces (filtered valid NDCG@10 and what each trainer logs)",
                  *(trace_table(r.label, r.seed, r.results) for r in runs
                    if r.results is not None and r.label != "BC" and kind(r) == "post")]
    write_records(output_dir / "runs.csv", [run_record(r) for r in runs if r.results is not None])
    trained = sum(r.results["train_seconds"] or 0 for r in runs if r.results is not None)
    parts += [
        f"Hardware: {hardware()}. Training time of all runs: {trained:.0f} s; wall time of this invocation: "
        f"{wall_seconds:.0f} s (runs reused from an earlier invocation cost it nothing).",
        f"    {command}",
    ]
    write_text(output_dir / "table.md", "\n\n".join(parts) + "\n")
    return "\n\n".join(parts)
