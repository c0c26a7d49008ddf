"""Where a training step's time goes: PyTorch's profiler over a few steps of one method, operators by input shape.

    python benchmarks/profile_step.py --dataset=items-700k --data_path=benchmarks/results/catalogue_cost/data \
        --output=benchmarks/results/profile_step/bc-700k.md

Loads the dataset as a run does (``--config_files`` on top, e.g. a dataset's model), builds ``--model`` (BC is HSTU
with the reward head) with the package's defaults (the log lines of what ``item_updates`` and ``policy_estimator``
chose are kept), runs a warm-up batch, times ``--steps`` batches, then profiles ``--steps`` more on one thread and
writes the operators with the most self time, grouped by input shape, and the seconds per step.
"""

import argparse
import datetime
import logging
import sys
import time
from pathlib import Path

import torch
from throughput import FirstBatches, machine  # noqa: E402 (benchmarks/ is the script's folder)
from torch.profiler import ProfilerActivity, profile

from recbole_align.safe_write import write_text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--model", default="BC")
    parser.add_argument("--config_files", default="")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    command = " ".join(["python", "benchmarks/profile_step.py", *(argv if argv is not None else sys.argv[1:])])
    sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
    from recbole.utils import init_seed

    from recbole_align.config import build_config
    from recbole_align.data import length_grouped, load_dataset, split_loaders
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer, resolve_settings, training_ratings

    torch.set_num_threads(1)
    choices = []
    handler = logging.Handler()
    handler.emit = lambda record: choices.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    settings = {"data_path": args.data_path, "state": "error", "show_progress": False, "reward_head": True,
                "checkpoint_dir": str(args.output.parent / "scratch")}
    config, spec = build_config(args.model, args.dataset, args.config_files.split(), settings)
    train, _, _ = split_loaders(config, load_dataset(config, spec.model_class))
    train = length_grouped(config, train)
    init_seed(config["seed"], config["reproducibility"])
    logging.getLogger().setLevel(logging.INFO)
    trainer = spec.trainer_class(config, spec.model_class(config, train._dataset))
    if isinstance(trainer, RewardWeightedTrainer):
        trainer.settings = resolve_settings(config, training_ratings(train._dataset, config))
    trainer._train_epoch(FirstBatches(train, 1), 0)
    start = time.perf_counter()
    trainer._train_epoch(FirstBatches(train, args.steps), 0)
    seconds = (time.perf_counter() - start) / args.steps
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer._train_epoch(FirstBatches(train, args.steps), 0)
    operators = prof.key_averages(group_by_input_shape=True)
    table = operators.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40,
                            max_shapes_column_width=70)
    catalogue = catalogue_share(operators, train._dataset.item_num)
    chosen = [line for line in choices if line.startswith(("item table updates", "policy estimator"))]
    report = (f"# {args.model} on {args.dataset}: a training step, profiled ({datetime.date.today()}, "
              f"{machine()}, one thread)\n\n    {command}\n\n"
              f"{train._dataset.item_num - 1} items, {len(train)} batches an epoch; {'; '.join(chosen)}.\n"
              f"Seconds per step (the first {args.steps} after a warm-up batch, unprofiled): {seconds:.3f}; the "
              f"profiled {args.steps} steps below; {catalogue:.1%} of their self time is in operators with a "
              f"catalogue-wide input (a dimension of {train._dataset.item_num} items), the rest in the trunk, "
              f"the loss's sampled rows and the optimizer.\n\n```\n{table}\n```\n")
    write_text(args.output, report)
    print(report)


def catalogue_share(operators, n_items):
    """The share of the profiled self CPU time spent in operators one of whose inputs has a dimension of
    ``n_items`` (the catalogue with its padding item): the work that grows with the catalogue."""
    total = sum(event.self_cpu_time_total for event in operators)
    wide = sum(event.self_cpu_time_total for event in operators
               if any(n_items in shape for shape in event.input_shapes if isinstance(shape, list)))
    return wide / total if total else 0.0


if __name__ == "__main__":
    main()
