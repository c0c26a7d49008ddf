"""BC, RSFT, Exp-RSFT and DRPO post-trained from one shared BC checkpoint, in the Exp-RSFT paper's
Table 3 layout (test cases rated >= 4.5; % change from BC) plus seconds per training epoch.

    python benchmarks/post_training.py --data_path=../shared/data --dataset=ml-1m-half \\
        --output_dir=benchmarks/results/post_training

The BC checkpoint is ``--pretrained_checkpoint`` or the BC stage's (trained once under
``checkpoint_dir``, then reused). Every run goes through run_recbole_align and writes its results
JSON under ``--output_dir``; a JSON already there is reused, so a rerun of the same command resumes
an interrupted benchmark (delete the folder to start over). Writes ``table.md``, ``results.json``
and ``results.csv`` there. Any other ``--key=value`` is a config override for every run
(``--epochs`` sets the post-training epochs only, ``--bc_epochs`` the BC stage's).
"""

import argparse
import json
import sys
from pathlib import Path

from recbole_align.quick_start import build_config
from recbole_align.quick_start import command_line_overrides
from recbole_align.sweep import bc_checkpoint, result_row, run_once, write_csv

METHODS = ("RSFT", "ExpRSFT", "DRPO")
SPLIT = "test_filtered"
COLUMNS = (("NDCG@10", "ndcg@10"), ("NDCG@50", "ndcg@50"), ("HR@10", "hit@10"), ("HR@50", "hit@50"), ("MRR", "mrr"))


def change(value, base):
    return f"{(value - base) / base * 100:+.1f}%" if base else "n/a"


def table(runs, bc_seconds):
    """Markdown: one row per method, the metrics of SPLIT with % change from BC, then s/epoch."""
    bc = runs["BC"]
    header = ["Method", *(name for name, _ in COLUMNS), "s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, results in runs.items():
        cells = [method]
        for _, key in COLUMNS:
            value = results[SPLIT][key]
            cells.append(f"{value:.4f}" if method == "BC" else f"{value:.4f} ({change(value, bc[SPLIT][key])})")
        seconds = bc_seconds if method == "BC" else results["seconds_per_epoch"]
        if seconds is None:
            cells.append("n/a")
        elif method == "BC" or not bc_seconds:
            cells.append(f"{seconds:.2f}")
        else:
            cells.append(f"{seconds:.2f} ({seconds / bc_seconds:.2f}x BC)")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\n{bc[f'n_{SPLIT}']} of {bc['n_test']} test cases have rating >= {bc['eval_rating_threshold']}; "
        f"metrics of each run's best epoch (filtered valid ndcg@10)."
    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--output_dir", default="benchmarks/results/post_training")
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

    bc_dict = {**overrides, **({} if args.bc_epochs is None else {"epochs": args.bc_epochs})}
    config, _ = build_config("ExpRSFT", args.dataset, config_files, bc_dict)
    checkpoint = bc_checkpoint(config, config_files, bc_dict)
    bc_training = Path(checkpoint).with_suffix(".json")  # the BC stage's own results, if it trained it
    bc_seconds = json.loads(bc_training.read_text())["seconds_per_epoch"] if bc_training.is_file() else None

    start = {**overrides, "pretrained_checkpoint": checkpoint}
    runs = {"BC": run_once(output_dir / "BC.json", "ExpRSFT", args.dataset, config_files, {**start, "epochs": 0})}
    if args.epochs is not None:
        start["epochs"] = args.epochs
    for method in METHODS:
        method_dict = {**start, **({"reward_lambda": args.reward_lambda} if method == "ExpRSFT" else {})}
        runs[method] = run_once(output_dir / f"{method}.json", method, args.dataset, config_files, method_dict)
        score, bc_score = runs[method][SPLIT]["ndcg@10"], runs["BC"][SPLIT]["ndcg@10"]
        print(f"{method}: {SPLIT} ndcg@10 {score:.4f} (BC {bc_score:.4f})", flush=True)

    text = table(runs, bc_seconds)
    (output_dir / "table.md").write_text(f"{text}\n\nBC checkpoint: {checkpoint}\n\n    {command}\n")
    rows = [{"method": method, **result_row(results)} for method, results in runs.items()]
    rows[0]["seconds_per_epoch"] = bc_seconds
    write_csv(rows, output_dir / "results.csv")
    (output_dir / "results.json").write_text(
        json.dumps({"command": command, "bc_checkpoint": checkpoint, "rows": rows}, indent=2)
    )
    print(text)


if __name__ == "__main__":
    main()
