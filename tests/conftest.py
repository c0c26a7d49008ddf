"""Shared fixtures: tiny RecBole atomic datasets and a CLI runner that reads the results JSON."""

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
import recbole
import torch

REPO = Path(__file__).resolve().parent.parent
ML100K_INTER = Path(recbole.__file__).parent / "dataset_example" / "ml-100k" / "ml-100k.inter"

# The device of the runs that the tests start: RECBOLE_ALIGN_TEST_DEVICE=cpu (default) or cuda. RecBole's
# Config picks CUDA whenever it sees a GPU, so on a GPU machine the cpu runs get an empty gpu_id.
TEST_DEVICE = os.environ.get("RECBOLE_ALIGN_TEST_DEVICE", "cpu")
if TEST_DEVICE not in ("cpu", "cuda") or (TEST_DEVICE == "cuda" and not torch.cuda.is_available()):
    raise pytest.UsageError(f"RECBOLE_ALIGN_TEST_DEVICE={TEST_DEVICE}: cpu, or cuda on a machine with a GPU")
DEVICE_ARGS = ["--gpu_id="] if TEST_DEVICE == "cpu" and torch.cuda.is_available() else []

# Tiny HSTU and training settings, as command-line overrides.
TINY = [
    "--epochs=1", "--MAX_ITEM_LIST_LENGTH=20", "--embedding_size=8", "--attention_dim=8",
    "--linear_dim=8", "--num_negatives=8", "--train_batch_size=64", "--show_progress=False",
    "--state=ERROR", *DEVICE_ARGS,
]


def with_overrides(base, *overrides):
    """``base`` args with ``--key=value`` overrides replacing its entries (RecBole rejects repeated keys)."""
    keys = {arg.split("=", 1)[0] for arg in overrides}
    return [arg for arg in base if arg.split("=", 1)[0] not in keys] + list(overrides)


def tiny(*overrides):
    """TINY with overrides."""
    return with_overrides(TINY, *overrides)


def write_atomic(data_path, name, frame):
    """Write ``frame`` (columns named like ``user_id:token``) as ``data_path/name/name.inter``."""
    folder = Path(data_path) / name
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / f"{name}.inter", sep="\t", index=False)
    return Path(data_path)


@pytest.fixture(scope="session")
def ml100k_slice(tmp_path_factory):
    """data_path holding ``ml-100k-slice``: the first 60 users of RecBole's bundled ml-100k."""
    frame = pd.read_csv(ML100K_INTER, sep="\t")
    users = sorted(frame["user_id:token"].unique())[:60]
    return write_atomic(tmp_path_factory.mktemp("data"), "ml-100k-slice", frame[frame["user_id:token"].isin(users)])


def run_in_process(cwd, main, *args):
    """``main(args)`` (a command's ``main``, e.g. ``recbole_align.quick_start.main``) in this process,
    from ``cwd`` (RecBole writes ./log and ./saved there): (exit status, its non-empty stderr lines).
    Much cheaper than a new process for runs that stop at an error; an exception other than the exit
    propagates (a traceback fails the test)."""
    stderr, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                main(list(args))
                status = 0
            except SystemExit as exit_info:
                status = exit_info.code
    finally:
        os.chdir(here)
    return status, [line for line in stderr.getvalue().splitlines() if line.strip()]


def run_tool(cwd, module, *args):
    """``python -m <module> args`` in ``cwd`` with this tree's package: the completed process."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def markdown_lines(text):
    """The lines of ``text`` with every markdown table row (pandas' to_markdown pads cells and marks
    alignment) written with one space around each cell and the rule as |---|: what a reader sees,
    independent of the padding."""
    lines = []
    for line in text.strip().splitlines():
        if not line.startswith("|"):
            lines.append(line)
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if all(set(cell) <= set(":-") and cell for cell in cells):
            lines.append("|" + "---|" * len(cells))
        else:
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def run_cli(cwd, *args, script="run_recbole_align.py"):
    """Run the CLI (or ``python -m <script>`` when it has no .py) in ``cwd``; returns the completed
    process and the results JSON (``--results_file`` is set to ``cwd/results.json``; None if absent)."""
    results_file = Path(cwd) / "results.json"
    command = [sys.executable, str(REPO / script)] if script.endswith(".py") else [sys.executable, "-m", script]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}  # this tree's package
    process = subprocess.run(
        [*command, *args, f"--results_file={results_file}", f"--checkpoint_dir={Path(cwd) / 'saved'}"],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=600,
    )
    results = json.loads(results_file.read_text()) if results_file.is_file() else None
    if results is not None:
        assert results["config"]["device"].startswith(TEST_DEVICE), results["config"]["device"]
    return process, results
