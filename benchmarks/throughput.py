"""Training and evaluation throughput of recbole-align, side by side with an older commit and RecTools.

    git worktree add /tmp/recbole-align-f4daed2 f4daed2     # the code before the speed issue
    python benchmarks/throughput.py --data_path=../shared/data --dataset=ml-1m-half \
        --code="[new=.,old=/tmp/recbole-align-f4daed2]" --threads="[1,2]" --output_dir=benchmarks/results/throughput

In one run, for each thread count and each code tree (a checkout of this repository), one worker
process loads the data and measures, with the tree's own defaults plus ``--key=value`` overrides:
BC of HSTU (with the tree's defaults, and with length-grouped batches or bf16 where the tree has
those settings) and of the SASRec backbone,
each post-training method (from the freshly initialised
model: the cost of a step does not depend on how trained the weights are) and one full evaluation
of the test cases. A training measurement runs ``--max_batches`` batches of one epoch (a whole epoch for
HSTU BC, whose grouped batches differ in cost) after one warm-up batch, ``--repeats`` times, and
reports the fastest as seconds per epoch = seconds per batch x batches per epoch, and real
(unpadded) positions per second. The workers run one after another, so each has the machine to
itself. Also measured in the same run: the machine's fp32 and bf16 GEMM peak (2048^3 products) at each
thread count, the useful GFLOP/s of HSTU BC (matrix products at real positions and causal pairs
only, forward and backward, over that peak), the peak memory of each worker, and RecTools'
HSTUModel on the same data and config (``benchmarks/rectools_peer.py``; skipped with a message when
rectools is not installed: ``pip install -e '.[bench]'``).

Writes ``throughput.json`` (every measurement, the machine, the date, the command) and ``table.md``.
"""

import argparse
import ast
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pandas as pd
import torch

HERE = Path(__file__).resolve().parent


def machine():
    """This machine in a results file's words: processor, cores, memory."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GB"


def gemm_gflops(threads, dtype, n=2048, repeats=5):
    """The best GFLOP/s of an n x n x n matrix product at ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def useful_bc_gflop(lengths, config):
    """Matrix-product FLOP of one HSTU BC epoch at the real positions only, forward and backward (3x
    forward): per layer and position the UVQK and output projections, per causal pair of real
    positions Q.K and A.V, and per position the 1 + R sampled logits."""
    d, h = config["embedding_size"], config["n_heads"]
    dqk, dv, layers, r = config["attention_dim"], config["linear_dim"], config["n_layers"], config["num_negatives"]
    positions = lengths.sum()
    pairs = (lengths * (lengths + 1) / 2).sum()
    per_position = layers * (2 * d * 2 * h * (dv + dqk) + 2 * h * dv * d) + 2 * d * (1 + r)
    per_pair = layers * 2 * h * (dqk + dv)
    return 3 * (positions * per_position + pairs * per_pair) / 1e9


class FirstBatches:
    """The first ``n`` batches of a loader (what the trainer's epoch loop needs of it)."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __iter__(self):
        return islice(iter(self.loader), self.n)

    def __len__(self):
        return min(self.n, len(self.loader))


def timed_epoch(trainer, train_data, max_batches, repeats):
    """Seconds per epoch of ``trainer`` on ``train_data``: the fastest of ``repeats`` passes over its
    first max_batches batches (0: all of them), after one warm-up batch, scaled to a whole epoch."""
    trainer._train_epoch(FirstBatches(train_data, 1), 0)
    batches = min(max_batches or len(train_data), len(train_data))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        trainer._train_epoch(FirstBatches(train_data, batches), 0)
        best = min(best, time.perf_counter() - start)
    return best / batches * len(train_data)


def worker(args, overrides):
    """Every measurement of one code tree at one thread count (runs in that tree's interpreter path)."""
    from recbole.utils import init_seed

    from recbole_align.config import build_config
    from recbole_align.data import load_dataset, split_loaders
    from recbole_align.registry import MODELS  # an older tree may lack a method: skipped
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer, resolve_settings, training_ratings

    try:
        from recbole_align.data import length_grouped
    except ImportError:  # code from before length-grouped batches
        length_grouped = None
    torch.set_num_threads(args.threads)
    base = {"data_path": args.data_path, "state": "error", "show_progress": False, "checkpoint_dir": args.scratch, **overrides}
    rows, loaded = [], {}

    def setup(model, backbone, reward_head, extra):
        settings = {**base, "backbone": backbone, "reward_head": reward_head, **extra}
        config, spec = build_config(model, args.dataset, config_dict=settings)
        key = (backbone, spec.model_class.__name__)
        if key not in loaded:
            train, _, test = split_loaders(config, load_dataset(config, spec.model_class))
            if length_grouped is not None:
                train = length_grouped(config, train)
            loaded[key] = train, test, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        train, test, data_mb = loaded[key]
        init_seed(config["seed"], config["reproducibility"])
        trainer = spec.trainer_class(config, spec.model_class(config, train._dataset).to(config["device"]))
        if isinstance(trainer, RewardWeightedTrainer):
            trainer.settings = resolve_settings(config, training_ratings(train._dataset, config))
        return config, trainer, train, test, data_mb

    # HSTU BC first: a measurement taken after PPO's and DPO's large allocations ran up to 1.7x slower
    jobs = [("BC", "HSTU", False, {}), ("BC", "HSTU", False, {"length_grouped_batches": True}),
            ("BC", "HSTU", False, {"mixed_precision": "bf16"})]
    jobs += [(m, "HSTU", m in args.on_policy, {}) for m in args.methods] + [("BC", "SASRec", False, {})]
    for model, backbone, reward_head, extra in jobs:
        if not set(extra) <= read_yaml_keys() or (args.runs and model not in args.runs) or model not in MODELS:
            continue  # code from before a setting (e.g. mixed_precision) would silently ignore it
        config, trainer, train, test, data_mb = setup(model, backbone, reward_head, extra)
        lengths = train._dataset.inter_feat[config["ITEM_LIST_LENGTH_FIELD"]].double()
        whole_epoch = model == "BC" and backbone == "HSTU"  # grouped batches differ in cost: time them all
        seconds = timed_epoch(trainer, train, 0 if whole_epoch else args.max_batches, args.repeats)
        label = f"{model} ({backbone}{''.join(f', {k}={v}' for k, v in extra.items())})"
        row = {"run": label, "seconds_per_epoch": seconds, "positions_per_second": lengths.sum().item() / seconds}
        if (model, backbone, extra) == ("BC", "HSTU", {}):
            row["useful_gflop_per_epoch"] = useful_bc_gflop(lengths, config).item()
            evaluation = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                trainer.evaluate(test, load_best_model=False)
                evaluation = min(evaluation, time.perf_counter() - start)
            rows.append({"run": "full evaluation (HSTU, test cases)", "seconds_per_epoch": evaluation})
        rows.append(row)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "peak_memory_mb": peak, "memory_after_data_mb": min(v[2] for v in loaded.values())}))


def read_yaml_keys():
    """The keys of the running code tree's recbole_align/properties/overall.yaml."""
    import yaml

    from recbole_align.registry import PROPERTIES_DIR

    return set(yaml.safe_load((PROPERTIES_DIR / "overall.yaml").read_text()))


def run_worker(tree, threads, args, overrides):
    """One worker process for code tree ``tree`` at ``threads`` threads; returns its measurements."""
    from recbole_align.experiment.methods import METHOD_TABLE  # this tree's (a worker may run an older one)

    env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve()), "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"--threads={threads}",
               f"--data_path={args.data_path}", f"--dataset={args.dataset}", f"--max_batches={args.max_batches}",
               f"--repeats={args.repeats}", *([f"--runs=[{','.join(args.runs)}]"] if args.runs else []),
               f"--methods={','.join(METHOD_TABLE)}",
               f"--on_policy={','.join(m for m, method in METHOD_TABLE.items() if method.on_policy)}",
               f"--scratch={args.output_dir / 'scratch'}", *overrides]
    process = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"worker for [{tree}] failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def run_rectools(threads, args):
    """RecTools' HSTUModel at ``threads`` threads in its own process, or None (with a message) without rectools."""
    inter_file = Path(args.data_path) / args.dataset / f"{args.dataset}.inter"
    command = [sys.executable, str(HERE / "rectools_peer.py"), f"--inter_file={inter_file}",
               f"--epochs={args.rectools_epochs}", f"--threads={threads}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        print(f"RecTools peer skipped: {process.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return None
    return json.loads(process.stdout[process.stdout.index("{"):])


def parse_list(text):
    """'[a,b]' or '[name=path,...]' -> list of strings."""
    return [item.strip() for item in text.strip().strip("[]").split(",") if item.strip()]


def report(results):
    """table.md: seconds per epoch per run, code tree and thread count, with ratios to the first tree."""
    frames = []
    for entry in results["measurements"]:
        frame = pd.DataFrame(entry["rows"]).assign(code=entry["code"], threads=entry["threads"])
        frames.append(frame)
    table = pd.concat(frames)
    seconds = table.pivot_table(index="run", columns=["threads", "code"], values="seconds_per_epoch", sort=False)
    names = [name for name, _ in results["code"]]
    lines = [f"# Throughput: {results['dataset']} ({results['date']}, {results['machine']})", "",
             f"Command: `{results['command']}`", "", "## Seconds per epoch (training) or per evaluation", ""]
    for threads in results["threads"]:
        block = seconds[threads].copy()
        for name in names[1:]:
            block[f"{name} / {names[0]}"] = block[name] / block[names[0]]
        if results["rectools"].get(str(threads)):
            peer = results["rectools"][str(threads)]
            block.loc["RecTools HSTUModel (BC)", names[0]] = min(peer["seconds_per_epoch"])
        lines += [f"### {threads} thread(s)", "", block.round(2).to_markdown(), ""]
    lines += ["## Useful GFLOP/s of HSTU BC against the GEMM peak", ""]
    useful = table[table["run"] == "BC (HSTU)"][["code", "threads", "seconds_per_epoch", "useful_gflop_per_epoch"]].copy()
    useful["useful_gflops"] = useful["useful_gflop_per_epoch"] / useful["seconds_per_epoch"]
    useful["fp32_peak_gflops"] = [results["gemm_peak"][str(t)]["fp32"] for t in useful["threads"]]
    useful["share_of_peak"] = useful["useful_gflops"] / useful["fp32_peak_gflops"]
    lines += [useful.round(3).to_markdown(index=False), "", "## Peak memory (MB, resident set of each worker)", ""]
    memory = pd.DataFrame([{"code": e["code"], "threads": e["threads"], "peak_memory_mb": e["peak_memory_mb"],
                            "after_data_loading_mb": e["memory_after_data_mb"]} for e in results["measurements"]])
    lines += [memory.round(0).to_markdown(index=False), "", "GEMM peak (GFLOP/s, 2048^3): " + ", ".join(
        f"{t} thread(s): fp32 {v['fp32']:.0f}, bf16 {v['bf16']:.0f}" for t, v in results["gemm_peak"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--data_path", required=True, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--dataset", default="ml-1m-half")
    parser.add_argument("--code", default="[new=.]", help='code trees to compare, "[name=path,...]"; the first is the reference')
    parser.add_argument("--threads", default="[1,2]", help='thread counts, e.g. "[1,2]"')
    parser.add_argument("--max_batches", type=int, default=8, help="timed batches per measurement (HSTU BC: a whole epoch)")
    parser.add_argument("--repeats", type=int, default=2, help="passes per measurement; the fastest counts")
    parser.add_argument("--runs", default=None, help='only these models, e.g. "[BC]" (default: all)')
    parser.add_argument("--rectools_epochs", type=int, default=2, help="RecTools epochs (the fastest is reported); 0: no peer")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/throughput"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--methods", help=argparse.SUPPRESS)  # the worker's: the harness's METHOD_TABLE, as this tree has it
    parser.add_argument("--on_policy", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    args.runs = parse_list(args.runs) if args.runs else None
    if args.worker:
        args.threads = int(args.threads)
        args.methods, args.on_policy = args.methods.split(","), args.on_policy.split(",")
        sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
        return worker(args, {k.lstrip("-"): ast.literal_eval(v) if v[:1] in "[{0123456789-" or v in ("True", "False") else v
                             for k, v in (arg.split("=", 1) for arg in overrides)})
    args.data_path, args.output_dir = str(Path(args.data_path).resolve()), args.output_dir.resolve()  # workers run in their trees
    trees = [tuple(item.split("=", 1)) for item in parse_list(args.code)]
    threads = [int(t) for t in parse_list(args.threads)]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "command": " ".join(["python", "benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "dataset": args.dataset, "code": trees, "threads": threads,
        "gemm_peak": {str(t): {"fp32": gemm_gflops(t, torch.float32), "bf16": gemm_gflops(t, torch.bfloat16)} for t in threads},
        "measurements": [], "rectools": {},
    }
    for t in threads:
        for name, tree in trees:
            print(f"measuring {name} ({tree}) on {t} thread(s)", file=sys.stderr, flush=True)
            results["measurements"].append({"code": name, "threads": t, **run_worker(tree, t, args, overrides)})
        if args.rectools_epochs > 0:
            print(f"measuring RecTools on {t} thread(s)", file=sys.stderr, flush=True)
            results["rectools"][str(t)] = run_rectools(t, args)
    (args.output_dir / "throughput.json").write_text(json.dumps(results, indent=2))
    (args.output_dir / "table.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
