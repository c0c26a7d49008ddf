"""The benchmark runner (recbole_align.benchmark): outputs, resume and the table formatter."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY
from recbole_align.benchmark import format_table, parse_list
from recbole_align.errors import AlignError


def test_format_table_means_stds_changes_and_bold_best():
    rows = {
        "BC": {"ndcg": (0.2, 0.01), "mrr": (0.1, 0.0), "seeds": 3},
        "ExpRSFT": {"ndcg": (0.25, 0.02), "mrr": (0.09, 0.001), "seeds": 3},
        "SASRec": {"ndcg": (0.1, 0.0), "mrr": None, "seeds": 3},
    }
    assert format_table(rows, [("NDCG@10", "ndcg"), ("MRR", "mrr")]) == "\n".join([
        "| Method | NDCG@10 | MRR |",
        "|---|---|---|",
        "| BC | 0.2000 ± 0.0100 | **0.1000 ± 0.0000** |",
        "| ExpRSFT | **0.2500 ± 0.0200** (+25.0%) | 0.0900 ± 0.0010 (-10.0%) |",
        "| SASRec | 0.1000 ± 0.0000 (-50.0%) | n/a |",
    ])
    one_seed = {"BC": {"ndcg": (0.2, 0.0), "seeds": 1}, "DPO": {"ndcg": (0.1, 0.0), "seeds": 1}}
    assert format_table(one_seed, [("NDCG@10", "ndcg")], bold_best=False).splitlines()[2:] == [
        "| BC | 0.2000 |", "| DPO | 0.1000 (-50.0%) |",
    ]


def test_parse_list():
    assert parse_list("[2020,2021]", "seeds", int) == [2020, 2021]
    assert parse_list("[BC,ExpRSFT]", "methods") == ["BC", "ExpRSFT"]
    with pytest.raises(AlignError, match="--seeds"):
        parse_list("[]", "seeds", int)


def benchmark(cwd, data_path, *args):
    command = [
        sys.executable, "-m", "recbole_align.benchmark", "--dataset=ml-100k-slice", f"--data_path={data_path}",
        "--seeds=[2020]", "--methods=[BC,ExpRSFT]", "--baselines=[GRU4Rec]", "--baseline_epochs=1",
        "--sweep_lambda=[1]", "--bc_epochs=2",
        "--output_dir=out", *[arg for arg in TINY if not arg.startswith("--epochs")], "--epochs=1", *args,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False)


def test_runner_writes_every_output_and_resumes(tmp_path, ml100k_slice):
    process = benchmark(tmp_path, ml100k_slice)
    assert process.returncode == 0, process.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("table.md", "table.csv", "unfiltered.csv", "reward_model.csv", "cost.csv", "epochs.png",
                 "lambda_sweep.png"):
        assert (out / name).is_file(), name
    runs = sorted((out / "runs").glob("*.json"))
    assert sorted(p.name.split("-seed")[0] for p in runs) == ["BC", "ExpRSFT", "ExpRSFT-lambda1", "GRU4Rec"]
    table = (out / "table.md").read_text()
    for heading in ("Table 3", "Unfiltered", "Table 2", "Cost", "λ sweep"):
        assert heading in table
    assert "| BC | " in table and "| ExpRSFT | " in table and "| GRU4Rec | " in table and "Avg Reward" in table
    assert process.stdout.count(" left") == 4  # one progress line per run

    stamps = {p: p.stat().st_mtime for p in runs}
    again = benchmark(tmp_path, ml100k_slice)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(reused)") == 4
    assert {p: p.stat().st_mtime for p in sorted((out / "runs").glob("*.json"))} == stamps

    changed = benchmark(tmp_path, ml100k_slice, "--learning_rate=0.01")  # another config: new runs
    assert changed.returncode == 0 and changed.stdout.count("(reused)") == 0


def test_runner_refuses_keys_it_sets_itself(tmp_path, ml100k_slice):
    process = benchmark(tmp_path, ml100k_slice, "--seed=1")
    assert process.returncode == 2 and "sets ['seed'] itself" in process.stderr


def test_remaining_time_uses_finished_runs_of_the_same_kind():
    from recbole_align.benchmark import Run, remaining_seconds

    runs = [Run("BC", "BC", 1, {}), Run("DPO", "DPO", 1, {}), Run("ExpRSFT λ=1", "ExpRSFT", 1, {}),
            Run("SASRec", "SASRec", 1, {})]
    spent = {"BC": [100.0], "post": [10.0, 20.0], "DPO": [20.0]}
    # BC: its own; DPO: another seed's DPO; the λ run: post-training's mean; no baseline yet: the mean of all
    assert remaining_seconds(runs, spent) == pytest.approx(100 + 20 + 15 + 130 / 3)
    assert remaining_seconds(runs, {}) == 0


@pytest.mark.parametrize("args, message", [
    (["--methods=[BC,NoSuchMethod]"], "--methods must be among"),
    (["--sweep_lambda=[0.5,0]"], "--sweep_lambda must be a list of numbers > 0"),
    (["--seeds=[]"], "--seeds must be a non-empty list"),
])
def test_runner_bad_options_fail_before_any_run(tmp_path, capsys, args, message):
    from recbole_align.benchmark import main

    with pytest.raises(SystemExit) as exit_info:
        main([f"--output_dir={tmp_path / 'out'}", "--baselines=[]", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
