"""Small benchmark scripts: support_size.py (the sampled support's share of the catalogue, at the two ends where
it is known), profile_step.py's share of catalogue-wide operators and paired_runs.py's sides."""

import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling throughput.py


def script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


support_size, profile_step, paired_runs = script("support_size"), script("profile_step"), script("paired_runs")


def sizes_with_tail(tmp_path, data_path, tail_samples):
    settings = tmp_path / f"tail-{tail_samples}.yaml"
    settings.write_text(f"policy_tail_samples: {tail_samples}\n")
    return support_size.support_sizes("ml-100k-slice", str(data_path), [str(settings)])


def test_one_tail_draw_adds_at_most_one_item_to_the_batch_targets(tmp_path, ml100k_slice):
    row = sizes_with_tail(tmp_path, ml100k_slice, 1)
    assert row["tail_samples"] == 1 and row["batches"] > 0
    assert 0 <= row["mean_share"] - row["mean_target_share"] <= 1 / row["items"] + 1e-12
    assert 0 < row["mean_share"] < 1


def test_many_tail_draws_cover_the_catalogue(tmp_path, ml100k_slice):
    row = sizes_with_tail(tmp_path, ml100k_slice, 200_000)  # every item drawn, but with probability ~1e-80
    assert row["min_support"] == row["max_support"] == row["items"]
    assert row["mean_share"] == pytest.approx(1.0)


def test_catalogue_share_counts_the_operators_with_a_catalogue_wide_input():
    operators = [SimpleNamespace(self_cpu_time_total=30, input_shapes=[[8, 11], []]),
                 SimpleNamespace(self_cpu_time_total=50, input_shapes=[[11, 4], [4, 8]]),
                 SimpleNamespace(self_cpu_time_total=120, input_shapes=[[8, 4], [], 11])]  # a scalar 11 is no shape
    assert profile_step.catalogue_share(operators, 11) == pytest.approx(0.4)
    assert profile_step.catalogue_share([], 11) == 0.0


def test_a_side_of_paired_runs_is_the_union_of_its_globs_one_run_a_seed(tmp_path):
    for name, seed in (("A-seed1-x.json", 1), ("A-seed2-y.json", 2), ("A-seed2-z.json", 2)):
        (tmp_path / name).write_text(json.dumps({"config": {"seed": seed}}))
    side = paired_runs.runs_by_seed([str(tmp_path / "A-seed1-*.json"), str(tmp_path / "A-seed2-y*.json"),
                                     str(tmp_path / "A-seed1-x.json")])  # a file two globs match counts once
    assert sorted(side) == [1, 2] and side[2]["results_file"].endswith("A-seed2-y.json")
    with pytest.raises(SystemExit, match="two runs of seed 2"):
        paired_runs.runs_by_seed([str(tmp_path / "A-seed2-*.json")])
