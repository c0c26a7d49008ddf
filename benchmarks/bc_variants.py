"""One table of BC runs of several training variants (each a `recbole_align.benchmark` output folder).

    python benchmarks/bc_variants.py --variants="[before=benchmarks/results/benchmark-ml-1m-half-HSTU,grouped=...]" \
        --output=benchmarks/results/speed_quality/table.md

Per variant, over its BC seeds: the rating-filtered test NDCG@10 at the best validation epoch (the
saved model), the filtered valid NDCG@10 at the best and at the final epoch of the budget (so that a
curve still rising, or falling, shows), the per-seed values, and the mean training seconds per epoch.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from recbole_align.safe_write import write_text


def bc_runs(folder):
    """The BC results JSON files of a benchmark output folder, one per seed."""
    return [json.loads(path.read_text()) for path in sorted(Path(folder, "runs").glob("BC-seed*.json"))]


def variant_row(name, runs):
    test = pd.Series([r["test_filtered"]["ndcg@10"] for r in runs])
    final_valid = pd.Series([r["epoch_log"][-1]["valid_filtered"]["ndcg@10"] for r in runs])
    best_valid = pd.Series([max(e["valid_filtered"]["ndcg@10"] for e in r["epoch_log"]) for r in runs])
    return {
        "variant": name,
        "seeds": len(runs),
        "test NDCG@10 (>=4.5), best epoch": f"{test.mean():.4f} ± {test.std(ddof=0):.4f}",
        "per seed": ", ".join(f"{v:.4f}" for v in test),
        "valid NDCG@10, best epoch": f"{best_valid.mean():.4f}",
        "valid NDCG@10, final epoch": f"{final_valid.mean():.4f}",
        "best epochs": ", ".join(str(r["best_epoch"]) for r in runs),
        "s/epoch": round(sum(r["seconds_per_epoch"] for r in runs) / len(runs), 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--variants", required=True, help='"[name=folder,...]": recbole_align.benchmark output folders')
    parser.add_argument("--output", type=Path, required=True, help="the markdown table (a .csv is written beside it)")
    args = parser.parse_args(argv)
    pairs = [item.split("=", 1) for item in args.variants.strip("[]").split(",") if item]
    table = pd.DataFrame([variant_row(name, bc_runs(folder)) for name, folder in pairs])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.output.with_suffix(".csv"), index=False)
    write_text(args.output, table.to_markdown(index=False) + "\n")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
