"""The Exp-RSFT paper's comparison: BC and post-training methods from one shared BC checkpoint.

Table 3 layout (test cases rated >= 4.5; % change from BC; Avg Reward when the checkpoint has a
reward head) plus seconds per training epoch against BC's, each method's per-epoch trace (filtered
valid NDCG@10 and the statistics its trainer logs), and the reward-model diagnostics of Table 2.

    python benchmarks/post_training.py --data_path=../shared/data --dataset=ml-1m-half \\
        --output_dir=benchmarks/results/post_training

The BC checkpoint is ``--pretrained_checkpoint`` or the BC stage's (trained once under
``checkpoint_dir``, with a reward head when a method needs one, then reused); BC's row is that
checkpoint evaluated by a 0-epoch run. Every run goes through run_recbole_align and writes its
results JSON under ``--output_dir``; a JSON already there is reused, so a rerun of the same command
resumes an interrupted benchmark (delete the folder to start over). Writes ``table.md``,
``results.json`` and ``results.csv`` there. Any other ``--key=value`` is a config override for
every run (``--epochs`` sets the post-training epochs only, ``--bc_epochs`` the BC stage's).
"""

import argparse
import json
import sys
from pathlib import Path

from recbole_align.benchmark import COLUMNS
from recbole_align.diagnostics import markdown_table, run_diagnostics
from recbole_align.pretrained import read_pretrained
from recbole_align.config import build_config, command_line_overrides, resolve_model
from recbole_align.sweep import bc_checkpoint, result_row, run_once, write_csv

SPLIT = "test_filtered"
# what the trainers log per epoch, shown in the traces
TRACED = ("mean_weight", "ess_share", "drpo_keep_fraction", "sample_reward", "kl_to_bc", "clip_fraction", "decided_fraction")


def with_change(value, base):
    return f"{value:.4f} ({(value - base) / base * 100:+.1f}%)" if base else f"{value:.4f}"


def table(runs, bc_seconds):
    """One row per method: the metrics of SPLIT (and Avg Reward) with % change from BC, then s/epoch."""
    bc = runs["BC"]
    has_reward = bc.get("avg_reward") is not None
    rows = []
    for method, results in runs.items():
        values = [results[SPLIT][key] for _, key in COLUMNS] + ([results["avg_reward"]] if has_reward else [])
        bases = [bc[SPLIT][key] for _, key in COLUMNS] + ([bc["avg_reward"]] if has_reward else [])
        cells = [f"{v:.4f}" if method == "BC" else with_change(v, b) for v, b in zip(values, bases)]
        seconds = bc_seconds if method == "BC" else results["seconds_per_epoch"]
        if seconds is None:
            cells.append("n/a")
        elif method == "BC" or not bc_seconds:
            cells.append(f"{seconds:.1f}")
        else:
            cells.append(f"{seconds:.1f} ({seconds / bc_seconds:.2f}x BC)")
        rows.append([method, *cells])
    header = ["Method", *(name for name, _ in COLUMNS), *(["Avg Reward"] if has_reward else []), "s/epoch"]
    return markdown_table(header, rows) + (
        f"\n\n{bc[f'n_{SPLIT}']} of {bc['n_test']} test cases have rating >= {bc['eval_rating_threshold']}; "
        f"metrics of each run's best epoch (filtered valid ndcg@10)"
        + ("; Avg Reward on the test contexts." if has_reward else ".")
    )


def trace(method, results):
    """One method's epochs: filtered valid NDCG@10 and the statistics its trainer logged."""
    log = results["epoch_log"]
    keys = [key for key in TRACED if log and key in log[0]]
    rows = [[e["epoch"], e["valid_filtered"]["ndcg@10"], *(e[k] for k in keys)] for e in log]
    return f"{method} per epoch:\n\n" + markdown_table(["epoch", "valid NDCG@10 (filtered)", *keys], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--output_dir", default="benchmarks/results/post_training")
    parser.add_argument("--methods", default="RSFT,ExpRSFT,DRPO,PPO,DPO", help="comma-separated post-training methods")
    parser.add_argument("--reward_lambda", type=float, default=0.5, help="Exp-RSFT's λ")
    parser.add_argument("--epochs", type=int, default=None, help="post-training epochs (default: the method yaml's)")
    parser.add_argument("--bc_epochs", type=int, default=None, help="BC stage epochs (default: HSTU.yaml's)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, rest = parser.parse_known_args()
    command = " ".join(["python", *sys.argv])
    sys.argv[1:] = []  # RecBole's Config reads sys.argv; the overrides go in as config_dict instead
    overrides = command_line_overrides(rest)
    if args.data_path:
        overrides["data_path"] = args.data_path
    config_files = args.config_files.strip().split(" ") if args.config_files else None
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    methods = args.methods.split(",")

    # the BC stage of a method that needs a reward head trains one, and it then serves every method
    needs_head = [m for m in methods if getattr(resolve_model(m).trainer_class, "requires_reward_head", False)]
    probe = (needs_head or methods)[0]
    bc_dict = {**overrides, **({} if args.bc_epochs is None else {"epochs": args.bc_epochs})}
    checkpoint = bc_checkpoint(build_config(probe, args.dataset, config_files, bc_dict)[0], config_files, bc_dict)
    bc_training = Path(checkpoint).with_suffix(".json")  # the BC run's own results, when it wrote them
    bc_seconds = json.loads(bc_training.read_text())["seconds_per_epoch"] if bc_training.is_file() else None

    start = {**overrides, "pretrained_checkpoint": checkpoint}
    runs = {"BC": run_once(output_dir / "BC.json", probe, args.dataset, config_files, {**start, "epochs": 0})}
    if args.epochs is not None:
        start["epochs"] = args.epochs
    for method in methods:
        method_dict = {**start, **({"reward_lambda": args.reward_lambda} if method == "ExpRSFT" else {})}
        runs[method] = run_once(output_dir / f"{method}.json", method, args.dataset, config_files, method_dict)
        score, bc_score = runs[method][SPLIT]["ndcg@10"], runs["BC"][SPLIT]["ndcg@10"]
        print(f"{method}: {SPLIT} ndcg@10 {score:.4f} (BC {bc_score:.4f})", flush=True)

    parts = [table(runs, bc_seconds), *(trace(m, runs[m]) for m in methods)]
    reward_model = None
    if read_pretrained(checkpoint)["config"]["reward_head"]:
        diagnostics = run_diagnostics(args.dataset, checkpoint, (), output_dir, overrides)
        parts.append(diagnostics["markdown"])
        reward_model = diagnostics["reward_model"]
    text = "\n\n".join(parts)
    (output_dir / "table.md").write_text(f"{text}\n\nBC checkpoint: {checkpoint}\n\n    {command}\n")
    rows = [{"method": m, **result_row(r), "avg_reward": r.get("avg_reward")} for m, r in runs.items()]
    rows[0]["seconds_per_epoch"] = bc_seconds
    write_csv(rows, output_dir / "results.csv")
    (output_dir / "results.json").write_text(json.dumps(
        {"command": command, "bc_checkpoint": checkpoint, "rows": rows, "reward_model": reward_model}, indent=2
    ))
    print(text)


if __name__ == "__main__":
    main()
