"""Loading a dataset with RecBole's python CSV parser or pandas' C parser (``compat.c_csv_parser``), side by side.

    python benchmarks/load_cost.py --datasets="[ml-1m-half,ciao-dvd]" --data_path=../shared/data \
        --sizes="[139k:2.34M:162k]" --config_files=properties/amazon-books.yaml --output_dir=benchmarks/results/load_cost

For each dataset (``--datasets`` from ``--data_path``, and data generated as ``benchmarks/scaling.py`` makes it
for each ``items:ratings:users`` of ``--sizes``), each parser of ``--parsers`` in turn, ``--repeats``
times alternating, loads it in a fresh worker process on one thread, as a run does (``load_dataset``, then
``split_loaders`` and the length-grouped training loader), and reports the seconds of each part, the process's
peak resident memory, the samples (rows of the interaction table after RecBole's processing: per user one
training sequence and the valid and test cases) and a digest of the loaded table (every column of the
interaction table and the token maps): the two parsers must give the same digest. ``--config_files`` apply to the generated sizes only (e.g.
Amazon Books' filters). Writes ``load_cost.json`` (every measurement, machine, date, command) and ``table.md``
(the fastest of the repeats; python / C).
"""

import argparse
import datetime
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from scaling import count, generate  # noqa: E402 (benchmarks/ is the script's folder)
from throughput import machine, parse_list  # noqa: E402

from recbole_align.safe_write import write_text  # noqa: E402

PARSERS = ("python", "c")


def table_digest(dataset):
    """A digest of the loaded interaction table (every column, in order) and the token maps of ``dataset``."""
    digest = hashlib.sha256()
    for column in dataset.inter_feat.columns:
        digest.update(column.encode())
        digest.update(pd.util.hash_pandas_object(dataset.inter_feat[column], index=False).to_numpy().tobytes())
    for field, tokens in sorted(dataset.field2id_token.items()):
        digest.update(field.encode())
        digest.update("\x00".join(map(str, tokens)).encode())
    return digest.hexdigest()[:16]


def worker(args):
    """One load of ``args.dataset`` with ``args.parser``, in this process; prints one JSON line."""
    import contextlib
    from unittest import mock

    import torch

    import recbole_align.data.dataset as dataset_module
    from recbole_align.config import build_config
    from recbole_align.data import length_grouped, load_dataset, split_loaders

    torch.set_num_threads(1)
    files = args.config_files.split() if args.config_files else []
    config, spec = build_config("BC", args.dataset, files, {"data_path": args.data_path, "state": "error",
                                                             "show_progress": False, "reward_head": True})
    parser = (contextlib.nullcontext() if args.parser == "c"
              else mock.patch.object(dataset_module, "c_csv_parser", contextlib.nullcontext))  # RecBole's own reader
    start = time.perf_counter()
    with parser:
        dataset = load_dataset(config, spec.model_class)
    loaded = time.perf_counter()
    digest = table_digest(dataset)
    split_start = time.perf_counter()
    train, _, _ = split_loaders(config, dataset)
    length_grouped(config, train)
    print(json.dumps({"load_seconds": loaded - start, "split_seconds": time.perf_counter() - split_start,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "digest": digest,
                      "samples": len(dataset.inter_feat)}))


def measure(args, dataset, data_path, config_files):
    """Every parser's loads of ``dataset``, alternating, each in a worker process."""
    rows = []
    for repeat in range(args.repeats):
        for parser in args.parsers:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"--parser={parser}",
                       f"--dataset={dataset}", f"--data_path={data_path}", f"--config_files={config_files}"]
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                sys.exit(f"load_cost.py: error: the {parser} load of {dataset} failed: {done.stderr.strip().splitlines()[-1:]}")
            rows.append({"dataset": dataset, "parser": parser, "repeat": repeat, **json.loads(done.stdout.strip().splitlines()[-1])})
            print(f"{dataset} {parser}: {rows[-1]['load_seconds']:.1f} s, {rows[-1]['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    return rows


def report(results):
    """table.md: per dataset and parser the fastest load, its split seconds and peak memory; python / C."""
    frame = pd.DataFrame(results["rows"])
    lines = [f"# Loading with RecBole's python parser or the C parser ({results['date']}, {results['machine']}, one thread)",
             "", f"    {results['command']}", "",
             "| dataset | samples | parser | load s | split s | peak MB | digest |", "|---|---|---|---|---|---|---|"]
    for (dataset, parser), part in frame.groupby(["dataset", "parser"], sort=False):
        best = part.loc[part.load_seconds.idxmin()]
        lines.append(f"| {dataset} | {best.samples:,} | {parser} | {best.load_seconds:.1f} | {best.split_seconds:.1f} | "
                     f"{part.peak_mb.max():,.0f} | {best.digest} |")
    lines += ["", "| dataset | load s, python / C | peak MB, python / C | same table |", "|---|---|---|---|"]
    for dataset, part in frame.groupby("dataset", sort=False):
        by = {parser: group for parser, group in part.groupby("parser")}
        if set(by) == set(PARSERS):
            lines.append(f"| {dataset} | {by['python'].load_seconds.min() / by['c'].load_seconds.min():.2f} | "
                         f"{by['python'].peak_mb.max() / by['c'].peak_mb.max():.2f} | "
                         f"{'yes' if part.digest.nunique() == 1 else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--datasets", default="[]", help='named datasets under --data_path, e.g. "[ml-1m-half]"')
    parser.add_argument("--data_path", default="../shared/data")
    parser.add_argument("--sizes", default="[]", help='generated data, "[items:ratings:users,...]"')
    parser.add_argument("--config_files", default="", help="yaml files for the generated sizes")
    parser.add_argument("--parsers", default="[python,c]")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/results/load_cost"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parser", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.argv = sys.argv[:1]  # RecBole's Config reads sys.argv
        return worker(args)
    args.parsers = parse_list(args.parsers)
    if not set(args.parsers) <= set(PARSERS):
        sys.exit(f"load_cost.py: error: --parsers must be among {list(PARSERS)}; got {args.parsers}.")
    args.output_dir = args.output_dir.resolve()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for dataset in parse_list(args.datasets):
        rows += measure(args, dataset, Path(args.data_path).resolve(), "")
    for size in parse_list(args.sizes):
        items, ratings, users = (count(part) for part in size.split(":"))
        name = f"scale-{size.replace(':', '-')}"
        if not (args.output_dir / "data" / name / f"{name}.inter").is_file():
            generate(args.output_dir / "data", name, users, items, ratings)
        config_files = " ".join(str(Path(f).resolve()) for f in args.config_files.split())
        rows += measure(args, name, args.output_dir / "data", config_files)
    results = {"command": " ".join(["python", "benchmarks/load_cost.py", *(argv if argv is not None else sys.argv[1:])]),
               "date": datetime.date.today().isoformat(),
               "machine": machine(),
               "rows": rows}
    write_text(args.output_dir / "load_cost.json", json.dumps(results, indent=2))
    write_text(args.output_dir / "table.md", report(results))
    print(report(results))


if __name__ == "__main__":
    main()
