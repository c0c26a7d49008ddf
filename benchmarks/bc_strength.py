"""How post-training's gains depend on the strength of the BC checkpoint it starts from, and BC's
plateau curve (the harness's BC rule, ``recbole_align.experiment.plan.BC_PLATEAU``).

    python benchmarks/bc_strength.py --dataset=ml-100k --seeds="[2020,2021,2022]" --levels="[5,10,20]" \\
        --methods="[BC,ContinuedBC,ExpRSFT,RSFT standardised]" \\
        --plateau_dir=benchmarks/results/protocol3-plateau-ml-100k --output_dir=benchmarks/results/bc-strength-ml-100k

For each BC budget N of ``--levels`` the benchmark runs into ``<output_dir>/bcN`` with ``--bc_epochs=N``
(BC trained exactly N epochs, the methods from it for ``--epochs``); its finished runs are reused, so
the command continues where an interrupted one stopped. The last level is the benchmark in
``--plateau_dir``: BC trained to its plateau (run there with these options when it has no
``runs.csv`` yet, else only read). Writes into ``--output_dir``:

* ``strength.csv`` / ``strength.md``: per level and method, BC's and the method's filtered test
  NDCG@10 and HR@10 (mean over seeds), the paired difference, its % of BC and its pooled 95%
  bootstrap interval (the harness's ``paired_final.csv`` / ``paired_best.csv``), at the final epoch
  of the budget and at the best validation epoch;
* ``strength.png``: each method's % gain over its BC against that BC's NDCG@10 (final and best epoch);
* ``bc_curve.png``: every plateau BC's NDCG@10 per epoch on all and on the rating-filtered valid
  cases and on the filtered test cases, the kept (best) epoch and the stop marked.
"""

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from recbole_align.experiment.plan import BC_PLATEAU
from recbole_align.benchmark import main as benchmark
from recbole_align.report import pyplot
from recbole_align.safe_write import write_text

VIEWS = {"final": "paired_final.csv", "best": "paired_best.csv"}


def run_level(output_dir, bc_epochs, args):
    """The benchmark of one BC level (runs reused); ``bc_epochs`` None: BC to its plateau."""
    benchmark([
        f"--dataset={args.dataset}", *([f"--data_path={args.data_path}"] if args.data_path else []),
        f"--seeds={args.seeds}", f"--methods={args.methods}", "--baselines=[]", f"--epochs={args.epochs}",
        f"--jobs={args.jobs}", f"--output_dir={output_dir}", *([f"--bc_epochs={bc_epochs}"] if bc_epochs else []),
    ])


def level_rows(level, folder):
    """The rows of ``strength.csv`` for the benchmark in ``folder``: every method against BC, pooled."""
    runs = pd.read_csv(folder / "runs.csv")
    bc = runs[runs["run"] == "BC"]
    rows = []
    for view, name in VIEWS.items():
        paired = pd.read_csv(folder / name)
        paired = paired[(paired["b"] == "BC") & (paired["seed"] == "pooled")]
        for record in paired.to_dict("records"):
            rows.append({
                "level": level, "bc_epochs": bc["epochs_run"].mean(), "bc_best_epoch": bc["best_epoch"].mean(),
                "view": view, "method": record["a"], "metric": record["metric"], "bc": record["mean_b"],
                "method_value": record["mean_a"], "difference": record["difference"],
                "gain_pct": 100 * record["relative"], "low_pct": 100 * record["low"] / record["mean_b"],
                "high_pct": 100 * record["high"] / record["mean_b"], "significant": record["significant"],
                "cases": record["cases"], "seeds": record["seeds"],
            })
    return rows


def plot_strength(table, path, title, levels):
    """% gain (pooled paired difference, 95% CI) of each method over its BC, against BC's NDCG@10."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    ndcg = table[table["metric"] == "ndcg@10"]
    for ax, view in zip(axes, VIEWS):
        rows = ndcg[ndcg["view"] == view]
        for method, points in rows.groupby("method", sort=False):
            points = points.sort_values("bc")
            ax.errorbar(points["bc"], points["gain_pct"], fmt="o-", capsize=3, label=method,
                        yerr=[points["gain_pct"] - points["low_pct"], points["high_pct"] - points["gain_pct"]])
        ax.axhline(0, color="grey", linestyle="--")
        ax.set_xlabel(f"BC's filtered test NDCG@10 (BC levels: {levels})")
        ax.set_title(f"{view} epoch of the post-training budget")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("% change of filtered test NDCG@10 over that BC (95% CI)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bc_curves(folder, path, title):
    """Each seed's plateau BC: NDCG@10 per epoch on all / filtered valid cases and filtered test cases."""
    plt = pyplot()
    runs = pd.read_csv(folder / "runs.csv")
    bc_runs = runs[runs["run"] == "BC"]
    fig, axes = plt.subplots(1, len(bc_runs), figsize=(5 * len(bc_runs), 4), sharey=True, squeeze=False)
    for ax, record in zip(axes[0], bc_runs.to_dict("records")):
        results = json.loads(Path(record["results_file"]).read_text())
        log = results["epoch_log"]
        epochs = [entry["epoch"] for entry in log]
        for split, name in (("valid", "valid, all cases (the stopping rule's)"), ("valid_filtered", "valid, rated >= 4.5"),
                            ("test_filtered", "test, rated >= 4.5")):
            if all(split in entry for entry in log):  # "valid" only where BC selected on all the valid cases
                ax.plot(epochs, [entry[split]["ndcg@10"] for entry in log], label=name, linewidth=1)
        ax.axvline(results["best_epoch"], color="black", linestyle="--", linewidth=1, label="kept (best) epoch")
        ax.set_title(f"seed {record['seed']}: {len(log)} epochs, best {results['best_epoch']}")
        ax.set_xlabel("BC epoch")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("NDCG@10")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--seeds", default="[2020,2021,2022]")
    parser.add_argument("--levels", default="[5,10,20]", help="BC epoch budgets below the plateau")
    parser.add_argument("--methods", default="[BC,ContinuedBC,ExpRSFT,RSFT standardised]")
    parser.add_argument("--epochs", type=int, default=30, help="post-training epochs")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--plateau_dir", required=True, help="the benchmark with BC to its plateau")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--report_only", action="store_true", help="tabulate the finished levels, run nothing")
    args = parser.parse_args(argv)
    output_dir, plateau_dir = Path(args.output_dir).resolve(), Path(args.plateau_dir).resolve()
    levels = [int(n) for n in args.levels.strip("[]").split(",") if n.strip()]
    folders = [(str(n), output_dir / f"bc{n}", n) for n in levels] + [("plateau", plateau_dir, None)]
    rows = []
    for level, folder, bc_epochs in folders:
        if not args.report_only and not (bc_epochs is None and (folder / "runs.csv").is_file()):
            run_level(folder, bc_epochs, args)
        if (folder / "runs.csv").is_file():
            rows += level_rows(level, folder)
    if not rows:
        sys.exit("bc_strength: no finished level to tabulate")
    table = pd.DataFrame(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(output_dir / "strength.csv", index=False)
    shown = table.assign(
        ci=[f"[{low:+.1f}%, {high:+.1f}%]" + (" *" if sig else "") for low, high, sig in
            zip(table["low_pct"], table["high_pct"], table["significant"])])
    columns = ["view", "level", "bc_epochs", "method", "metric", "bc", "method_value", "gain_pct", "ci", "cases", "seeds"]
    write_text(output_dir / "strength.md",
        "Gain of each method over the BC it starts from, by BC level (BC trained N epochs, or to its plateau: "
        f"{BC_PLATEAU}); rating-filtered test cases, pooled paired bootstrap 95% CI over seeds (* excludes 0).\n\n"
        + shown[columns].to_markdown(index=False, floatfmt=".4f") + "\n\n    python benchmarks/bc_strength.py "
        + " ".join(sys.argv[1:] if argv is None else argv) + "\n")
    title = f"{args.dataset}: post-training gain against the strength of its BC"
    plot_strength(table, output_dir / "strength.png", title, ", ".join(level for level, _, _ in folders))
    if (plateau_dir / "runs.csv").is_file():
        plot_bc_curves(plateau_dir, output_dir / "bc_curve.png", f"{args.dataset}: BC trained to its plateau")
    print((output_dir / "strength.md").read_text())


if __name__ == "__main__":
    main()
