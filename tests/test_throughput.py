"""benchmarks/throughput.py: the FLOP count, and one tiny run of the whole command."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TINY

spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def test_useful_flop_count_by_hand():
    config = {"embedding_size": 2, "n_heads": 1, "attention_dim": 2, "linear_dim": 2, "n_layers": 1, "num_negatives": 3}
    lengths = torch.tensor([1.0, 2.0])  # 3 positions, 1 + 3 causal pairs
    # per position: UVQK 2*2*8 + output 2*2*2 + logits 2*2*4 = 32 + 8 + 16; per pair: 2*(2+2) = 8
    expected = 3 * (3 * (32 + 8 + 16) + 4 * 8) / 1e9
    assert throughput.useful_bc_gflop(lengths, config).item() == pytest.approx(expected)


@pytest.mark.slow
def test_tiny_run_writes_every_row(tmp_path, ml100k_slice):
    command = [
        sys.executable, str(REPO / "benchmarks" / "throughput.py"), f"--data_path={ml100k_slice}",
        "--dataset=ml-100k-slice", "--code=[new=.]", "--threads=[1]", "--max_batches=1", "--repeats=1",
        "--rectools_epochs=1", f"--output_dir={tmp_path}", *[a for a in TINY if not a.startswith("--epochs")],
    ]
    process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((tmp_path / "throughput.json").read_text())
    runs = {row["run"] for row in results["measurements"][0]["rows"]}
    assert {"BC (HSTU)", "BC (SASRec)", "PPO (HSTU)", "DPO (HSTU)", "full evaluation (HSTU, test cases)"} <= runs
    assert all(row["seconds_per_epoch"] > 0 for row in results["measurements"][0]["rows"])
    assert results["gemm_peak"]["1"]["fp32"] > 0 and "## Useful GFLOP/s" in (tmp_path / "table.md").read_text()
