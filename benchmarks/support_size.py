"""How much of the catalogue the sampled support of PPO, GRPO and DPO covers: how strong a sampled-vs-exact check is.

    python benchmarks/support_size.py --datasets="[ml-100k,ml-1m-half,ciao-dvd]" --data_path=../shared/data \
        --output=benchmarks/results/support_size/support_size.json

For each dataset, one epoch of the training batches that PPO sees (the package's defaults for PPO, or
``--config_files`` on top) is read without training: each batch's :class:`recbole_align.trainer.on_policy.Support`
is built as the trainer builds it (every target item of the batch's trained positions, and the distinct items of
``policy_tail_samples`` uniform draws), and its size is counted. Where the support holds most of the catalogue, the
sampled estimator is close to the exact one by construction, and a check that they agree says little; where it
holds a small share, the check tests the estimator. Writes the JSON (per dataset: items, batches, the support's
mean, smallest and largest size, its mean share of the catalogue and the share that is the batch's targets) and a
markdown table beside it.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from throughput import machine  # noqa: E402 (benchmarks/ is the script's folder)

from recbole_align.safe_write import write_text


def support_sizes(dataset, data_path, config_files):
    """{dataset, items, tail_samples, batches, mean/min/max support, mean share, mean target share} of one epoch."""
    from recbole.utils import init_seed

    from recbole_align.config import build_config
    from recbole_align.data import length_grouped, load_dataset, split_loaders
    from recbole_align.model.policy import next_step
    from recbole_align.trainer.on_policy import Support

    settings = {"data_path": data_path, "state": "error", "show_progress": False, "reward_head": True}
    config, spec = build_config("PPO", dataset, config_files, settings)
    train, _, _ = split_loaders(config, load_dataset(config, spec.model_class))
    train = length_grouped(config, train)
    init_seed(config["seed"], config["reproducibility"])
    n_items, tail = train._dataset.item_num, config["policy_tail_samples"]
    sizes, heads = [], []
    for batch in train:
        item_seq = batch[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]]
        seq_len = batch[config["ITEM_LIST_LENGTH_FIELD"]]
        mask = torch.arange(item_seq.size(1)) < seq_len.unsqueeze(1)  # every valid position trains (position_mask)
        targets = next_step(item_seq, seq_len, batch[config["ITEM_ID_FIELD"]])[mask]
        support = Support(targets, n_items, tail)
        sizes.append(len(support.items) - 1)  # slot 0 is the padding item
        heads.append(len(torch.unique(targets)))
    catalogue = n_items - 1
    sizes, heads = pd.Series(sizes), pd.Series(heads)
    return {"dataset": dataset, "items": catalogue, "tail_samples": tail, "batches": len(sizes),
            "mean_support": sizes.mean(), "min_support": int(sizes.min()), "max_support": int(sizes.max()),
            "mean_share": (sizes / catalogue).mean(), "mean_target_share": (heads / catalogue).mean()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", required=True, help='"[ml-100k,ml-1m-half]"')
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--config_files", default="")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    command = " ".join(["python", "benchmarks/support_size.py", *(argv if argv is not None else sys.argv[1:])])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
    rows = [support_sizes(name.strip(), args.data_path, args.config_files.split())
            for name in args.datasets.strip("[] ").split(",") if name.strip()]
    results = {"command": command, "date": datetime.date.today().isoformat(), "machine": machine(), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, json.dumps(results, indent=2))
    table = pd.DataFrame(rows).round(3).to_markdown(index=False)
    write_text(args.output.with_suffix(".md"), f"# The sampled support's size ({results['date']})\n\n    {command}\n\n"
                                              f"{table}\n")
    print(table)


if __name__ == "__main__":
    main()
