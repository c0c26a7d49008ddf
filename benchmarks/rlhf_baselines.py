"""The Exp-RSFT paper's RLHF baselines, PPO and online DPO, post-trained from one BC checkpoint with
a co-trained reward head, in the paper's Table 3 layout (test cases rated >= 4.5; % change from
BC; Avg Reward), each method's per-epoch trace (filtered valid NDCG@10 against the reward of its
own samples and its KL to BC), and the reward-model diagnostics of Table 2.

    python benchmarks/rlhf_baselines.py --data_path=../shared/data --dataset=ml-1m-half \\
        --output_dir=benchmarks/results/rlhf_baselines

The BC checkpoint is ``--pretrained_checkpoint`` (it must have a reward head) or the one PPO's BC
stage trains with a reward head (once under ``checkpoint_dir``, then reused); BC's row is that
checkpoint evaluated by a 0-epoch run. Every run goes through run_recbole_align and writes its
results JSON under ``--output_dir``; a JSON already there is reused, so a rerun resumes. Writes
``table.md``, ``results.csv``, ``results.json`` and the diagnostics files there. Any other
``--key=value`` is a config override for every run (``--epochs`` sets the post-training epochs
only, ``--bc_epochs`` the BC stage's).
"""

import argparse
import json
import sys
from pathlib import Path

from recbole_align.diagnostics import markdown_table, run_diagnostics
from recbole_align.quick_start import build_config
from recbole_align.quick_start import command_line_overrides
from recbole_align.sweep import bc_checkpoint, result_row, run_once, write_csv

SPLIT = "test_filtered"
COLUMNS = (("NDCG@10", "ndcg@10"), ("NDCG@50", "ndcg@50"), ("HR@10", "hit@10"), ("HR@50", "hit@50"), ("MRR", "mrr"))
TRACED = ("sample_reward", "kl_to_bc", "clip_fraction", "decided_fraction")  # what the trainers log per epoch


def with_change(value, base):
    return f"{value:.4f} ({(value - base) / base * 100:+.1f}%)" if base else f"{value:.4f}"


def table(runs):
    """Markdown: one row per method, the metrics of SPLIT and Avg Reward with % change from BC."""
    bc = runs["BC"]
    rows = []
    for method, results in runs.items():
        values = [results[SPLIT][key] for _, key in COLUMNS] + [results["avg_reward"]]
        bases = [bc[SPLIT][key] for _, key in COLUMNS] + [bc["avg_reward"]]
        rows.append([method, *(f"{v:.4f}" if method == "BC" else with_change(v, b) for v, b in zip(values, bases))])
    return markdown_table(["Method", *(name for name, _ in COLUMNS), "Avg Reward"], rows) + (
        f"\n\n{bc[f'n_{SPLIT}']} of {bc['n_test']} test cases have rating >= {bc['eval_rating_threshold']}; "
        f"metrics of each run's best epoch (filtered valid ndcg@10); Avg Reward on the test contexts."
    )


def trace(method, results):
    """One method's epochs: filtered valid NDCG@10 and the statistics its trainer logged."""
    keys = [key for key in TRACED if key in results["epoch_log"][0]]
    rows = [[e["epoch"], e["valid_filtered"]["ndcg@10"], *(e[k] for k in keys)] for e in results["epoch_log"]]
    return f"{method} per epoch:\n\n" + markdown_table(["epoch", "valid NDCG@10 (filtered)", *keys], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--output_dir", default="benchmarks/results/rlhf_baselines")
    parser.add_argument("--methods", default="PPO,DPO", help="comma-separated post-training methods")
    parser.add_argument("--epochs", type=int, default=None, help="post-training epochs (default: the method yaml's)")
    parser.add_argument("--bc_epochs", type=int, default=None, help="BC stage epochs (default: HSTU.yaml's)")
    args, rest = parser.parse_known_args()
    command = " ".join(["python", *sys.argv])
    sys.argv[1:] = []  # RecBole's Config reads sys.argv; the overrides go in as config_dict instead
    overrides = command_line_overrides(rest)
    if args.data_path:
        overrides["data_path"] = args.data_path
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    bc_dict = {**overrides, **({} if args.bc_epochs is None else {"epochs": args.bc_epochs})}
    checkpoint = bc_checkpoint(build_config("PPO", args.dataset, config_dict=bc_dict)[0], None, bc_dict)
    start = {**overrides, "pretrained_checkpoint": checkpoint}
    runs = {"BC": run_once(output_dir / "BC.json", "PPO", args.dataset, None, {**start, "epochs": 0})}
    if args.epochs is not None:
        start["epochs"] = args.epochs
    methods = args.methods.split(",")
    for method in methods:
        runs[method] = run_once(output_dir / f"{method}.json", method, args.dataset, None, start)
    diagnostics = run_diagnostics(args.dataset, checkpoint, (), output_dir, overrides)

    text = "\n\n".join([table(runs), *(trace(m, runs[m]) for m in methods), diagnostics["markdown"]])
    (output_dir / "table.md").write_text(f"{text}\nBC checkpoint: {checkpoint}\n\n    {command}\n")
    rows = [{"method": m, **result_row(r), "avg_reward": r["avg_reward"]} for m, r in runs.items()]
    write_csv(rows, output_dir / "results.csv")
    (output_dir / "results.json").write_text(json.dumps(
        {"command": command, "bc_checkpoint": checkpoint, "rows": rows, "reward_model": diagnostics["reward_model"]},
        indent=2,
    ))
    print(text)


if __name__ == "__main__":
    main()
