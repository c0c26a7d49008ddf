"""HSTU (behaviour cloning) vs RecBole's SASRec on the same data, split and evaluator.

SASRec gets HSTU's size (d, blocks, heads, max_len, dropout) and RecBole's own training (one sample
per prefix, CE over the catalogue). Each model runs in its own process through
run_recbole_align.py; the table is built from the results JSON files.

    python benchmarks/hstu_vs_sasrec.py --data_path=../shared/data --output_dir=benchmarks/results/hstu_vs_sasrec
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZE = {"d": 50, "n_layers": 2, "n_heads": 1, "max_len": 200, "dropout": 0.2}
MODEL_ARGS = {
    "HSTU": [],  # recbole_align/properties/model/HSTU.yaml is the reference ML-1M config
    "SASRec": [
        f"--hidden_size={SIZE['d']}", f"--inner_size={SIZE['d']}", f"--n_layers={SIZE['n_layers']}",
        f"--n_heads={SIZE['n_heads']}", f"--hidden_dropout_prob={SIZE['dropout']}",
        f"--attn_dropout_prob={SIZE['dropout']}", f"--MAX_ITEM_LIST_LENGTH={SIZE['max_len']}",
    ],
}
COLUMNS = ["ndcg@10", "hit@10", "mrr"]


def overridden(defaults, extra):
    """``defaults`` minus the keys that the user's extra ``--key=value`` args set again."""
    keys = {arg.split("=", 1)[0] for arg in extra}
    return [arg for arg in defaults if arg.split("=", 1)[0] not in keys]


def run(model, args, output_dir):
    """Run one model (or reuse its results JSON) and return the results dict."""
    results_file = output_dir / f"{model}.json"
    if not results_file.is_file():
        command = [
            sys.executable, str(REPO / "run_recbole_align.py"), f"--model={model}", f"--dataset={args.dataset}",
            f"--data_path={args.data_path}", f"--epochs={args.epochs[model]}", f"--results_file={results_file}", f"--checkpoint_dir={output_dir / 'saved'}",
            "--show_progress=False", *overridden(MODEL_ARGS[model], args.extra), *args.extra,
        ]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=output_dir)
    return json.loads(results_file.read_text())


def table(results):
    """Markdown table: filtered and unfiltered metrics, then cost."""
    header = (
        ["model"] + [f"{c} (>=4.5)" for c in COLUMNS] + COLUMNS
        + ["s/epoch", "epochs (best)", "train s", "peak MB", "device"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, r in results.items():
        row = [model] + [f"{r['test_filtered'][c]:.4f}" for c in COLUMNS] + [f"{r['test'][c]:.4f}" for c in COLUMNS]
        row += [
            f"{r['seconds_per_epoch']:.1f}", f"{r['epochs_run']} ({r['best_epoch']})", f"{r['train_seconds']:.0f}",
            f"{r['peak_memory_mb']:.0f}", str(r["config"]["device"]),
        ]
        lines.append("| " + " | ".join(row) + " |")
    n = next(iter(results.values()))
    lines.append(f"\n{n['n_test_filtered']} of {n['n_test']} test cases have rating >= {n['eval_rating_threshold']}.")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--data_path", required=True, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--output_dir", default="benchmarks/results/hstu_vs_sasrec")
    parser.add_argument("--hstu_epochs", type=int, default=101, help="epoch budget (early stopping after 10)")
    parser.add_argument("--sasrec_epochs", type=int, default=50, help="epoch budget (early stopping after 10)")
    parser.add_argument("--models", default="HSTU,SASRec")
    args, args.extra = parser.parse_known_args()
    args.epochs = {"HSTU": args.hstu_epochs, "SASRec": args.sasrec_epochs}
    args.data_path = str(Path(args.data_path).resolve())
    output_dir = Path(args.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {model: run(model, args, output_dir) for model in args.models.split(",")}
    text = table(results)
    (output_dir / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
