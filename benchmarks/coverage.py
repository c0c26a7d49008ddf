"""How often the paired intervals cover the true difference, on generated per-case data (issue 36).

    python benchmarks/coverage.py --output_dir=benchmarks/results/coverage

Per-case differences of two methods trained with S seeds on N cases are drawn as

    x_si = delta + a_i + b_s + e_si,   a_i ~ N(0, case_sd^2), b_s ~ N(0, seed_sd^2), e_si ~ N(0, noise_sd^2),

the two-way random-effects model behind recbole_align.evaluator.paired, whose true difference (over the
population of seeds and of cases) is delta. The defaults are the scale of ml-1m-half's NDCG@10
differences: N = 793 cases, a per-case spread of about 0.1 and per-seed differences that spread by about
0.005 (and twice that, ``--seed_sd``). For S = 3 and 5 seeds, ``--replications`` data sets each: the share whose 95% interval holds delta,
for the interval that counts seeds and cases (``seed_and_case_interval``, the harness's) and for the
case-only paired bootstrap over the seed-averaged differences (the harness's before issue 36; it takes
the trained models as fixed). Writes coverage.json (the settings, every coverage, its binomial 95%
interval, the date and command) and table.md.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from recbole_align.evaluator.paired import seed_and_case_interval
from recbole_align.safe_write import write_text


def simulate(seeds, cases=793, replications=1000, delta=0.01, case_sd=0.1, seed_sd=0.005, noise_sd=0.1, resamples=1000,
             rng_seed=0):
    """{"seeds and cases": coverage, "case-only bootstrap": coverage} of ``replications`` generated data sets."""
    rng = np.random.default_rng(rng_seed)
    covered = {"seeds and cases": 0, "case-only bootstrap": 0}
    for _ in range(replications):
        x = (delta + rng.normal(0, case_sd, (1, cases)) + rng.normal(0, seed_sd, (seeds, 1))
             + rng.normal(0, noise_sd, (seeds, cases)))
        _, _, low, high, _ = seed_and_case_interval(x)
        covered["seeds and cases"] += low <= delta <= high
        case_only = stats.bootstrap((x.mean(0),), np.mean, n_resamples=resamples, method="percentile",
                                    random_state=rng).confidence_interval
        covered["case-only bootstrap"] += case_only.low <= delta <= case_only.high
    return {name: hits / replications for name, hits in covered.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="3,5")
    parser.add_argument("--seed_sd", default="0.005,0.01", help="the spread of the seeds' differences, one run each")
    parser.add_argument("--replications", type=int, default=1000)
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/coverage"))
    args = parser.parse_args(argv)
    rows = []
    for seed_sd in (float(s) for s in args.seed_sd.split(",")):
        for seeds in (int(s) for s in args.seeds.split(",")):
            for method, coverage in simulate(seeds, replications=args.replications, seed_sd=seed_sd).items():
                low, high = stats.binomtest(round(coverage * args.replications), args.replications).proportion_ci()
                rows.append({"seed_sd": seed_sd, "seeds": seeds, "interval": method, "coverage": coverage,
                             "coverage_low": low, "coverage_high": high})
    args.output_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/coverage.py", *(argv if argv is not None else sys.argv[1:])])
    write_text(args.output_dir / "coverage.json", json.dumps(
        {"date": datetime.date.today().isoformat(), "command": command, "replications": args.replications,
         "model": "x_si = 0.01 + a_i + b_s + e_si; sd 0.1, seed_sd, 0.1; 793 cases", "rows": rows}, indent=2))
    table = pd.DataFrame(rows).round(3).to_markdown(index=False)
    write_text(args.output_dir / "table.md", f"# Coverage of the paired 95% intervals\n\n`{command}`\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
