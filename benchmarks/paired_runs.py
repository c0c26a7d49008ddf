"""Two sets of runs compared case by case, seeds paired, where the harness cannot (e.g. BC with two settings).

    python benchmarks/paired_runs.py \
        --a="benchmarks/results/sparse-items-ml-1m-half/runs/BC-seed*.json" --a_label="BC sparse" \
        --b="benchmarks/results/protocol3-plateau-ml-1m-half/runs/BC-seed202[012]-*.json" --b_label="BC dense" \
        --output=benchmarks/results/sparse-items-ml-1m-half/paired.md

Each side is one or more globs of results JSONs (``--a``/``--b`` repeated; one run per seed, each with its
``cases_file``); the seeds both sides have are paired. For the rating-filtered and for all test cases, at each
run's best (kept) epoch and at the end of its training, the difference A - B of NDCG@10 and HR@10 with the
interval counting seeds and cases (``recbole_align.evaluator.paired``), Holm-adjusted over the table; each side's
seeds, epochs, training time, Avg Reward and (for the on-policy methods) the run's own estimate of KL(π || π_BC)
at its last epoch.
"""

import argparse
import glob
import json
import shlex
import sys
from pathlib import Path

import pandas as pd

from recbole_align.evaluator.paired import holm, paired_difference, read_cases
from recbole_align.safe_write import write_text

METRICS = ("ndcg@10", "hit@10")


def runs_by_seed(patterns):
    """{seed: results} of the results JSONs matching any of ``patterns``; two runs of one seed are an error."""
    runs = {}
    for path in sorted({path for pattern in patterns for path in glob.glob(pattern)}):
        results = json.loads(Path(path).read_text())
        seed = results["config"]["seed"]
        if seed in runs:
            sys.exit(f"paired_runs.py: error: two runs of seed {seed} match {patterns}: narrow the globs.")
        runs[seed] = {**results, "results_file": path}
    return runs


def compare(a, b, names):
    """(markdown, records): A - B for each selection of cases, view and metric over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        sys.exit("paired_runs.py: error: no seed has a run on both sides.")
    results = []
    for filtered in (True, False):
        for view in ("best", "final"):
            ranks = [[read_cases(side[seed]["cases_file"], view=view, filtered=filtered) for seed in seeds] for side in (a, b)]
            for metric in METRICS:
                results.append(({"cases": "rated >= threshold" if filtered else "all", "view": view, "metric": metric},
                                 paired_difference(ranks[0], ranks[1], metric, names=names)))
    adjusted = holm([result["p"] for _, result in results])
    records, rows = [], []
    for (key, result), p_holm in zip(results, adjusted):
        records.append({**key, **result, "p_holm": p_holm, "seeds": seeds})
        bold = "**" if p_holm < 0.05 else ""
        rows.append({**key, "A": f"{result['mean_a']:.4f}", "B": f"{result['mean_b']:.4f}",
                     "A - B, points (%)": f"{bold}{100 * result['difference']:+.2f} ({100 * result['relative']:+.1f}%){bold}",
                     "95% CI (seeds and cases)": f"[{100 * result['low']:+.2f}, {100 * result['high']:+.2f}]",
                     "p": f"{result['p']:.3g}", "p (Holm)": f"{p_holm:.3g}", "test cases": result["cases"]})
    return pd.DataFrame(rows).to_markdown(index=False), records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, action="append", help="glob of side A's results JSONs (repeat for several)")
    parser.add_argument("--b", required=True, action="append", help="glob of side B's results JSONs (repeat for several)")
    parser.add_argument("--a_label", default="A")
    parser.add_argument("--b_label", default="B")
    parser.add_argument("--output", type=Path, required=True, help="the markdown report (a .json of the records beside it)")
    args = parser.parse_args(argv)
    a, b = runs_by_seed(args.a), runs_by_seed(args.b)
    markdown, records = compare(a, b, (args.a_label, args.b_label))
    runs = pd.DataFrame([{"side": label, "seed": seed, "best epoch": r["best_epoch"], "epochs run": r.get("epochs_run"),
                          "train seconds": round(r.get("train_seconds") or 0), "Avg Reward": r.get("avg_reward"),
                          "KL to BC, last epoch": (r["epoch_log"][-1].get("kl_to_bc") if r.get("epoch_log") else None),
                          "results": Path(r["results_file"]).name}
                         for label, side in ((args.a_label, a), (args.b_label, b)) for seed, r in sorted(side.items())])
    command = shlex.join(["python", "benchmarks/paired_runs.py", *(argv or sys.argv[1:])])
    report = (f"# {args.a_label} vs {args.b_label}\n\n    {command}\n\nA - B, NDCG@10 and HR@10 points; 95% interval counting "
              f"seeds and cases; Holm over the table, **bold** significant after it.\n\n{markdown}\n\n{runs.to_markdown(index=False)}\n")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, report)
    write_text(args.output.with_suffix(".json"), json.dumps(records, indent=2, default=float))
    print(report)


if __name__ == "__main__":
    main()
