"""Hyper-parameter search: RecBole's HyperTuning over recbole-align runs (python -m recbole_align.hyper)."""

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny

from recbole_align import hyper


@pytest.mark.slow
def test_exhaustive_search_over_reward_lambda(tmp_path, ml100k_slice):
    params_file = tmp_path / "lambda.hyper"
    params_file.write_text("reward_lambda choice [0.5,2]\n")
    output = tmp_path / "search.json"
    process, _ = run_cli(
        tmp_path, "--model=ExpRSFT", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--params_file={params_file}", f"--output_file={output}",
        *tiny("--valid_metric=MRR", "--metric_decimal_place=8"), script="recbole_align.hyper",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    summary = json.loads(output.read_text())
    trials = {trial["params"]: trial for trial in summary["trials"]}
    assert set(trials) == {"reward_lambda:0.5", "reward_lambda:2"}
    runs = {params: json.loads(Path(trial["results_file"]).read_text()) for params, trial in trials.items()}
    for params, trial in trials.items():  # each trial's own results JSON, scored on the filtered valid MRR
        assert trial["best_valid_score"] == runs[params]["valid_filtered"]["mrr"]
        assert runs[params]["config"]["reward_lambda"] == float(params.split(":")[1])
    assert summary["best_params"]["reward_lambda"] in (0.5, 2)
    assert summary["best_valid_score"] == trials[f"reward_lambda:{summary['best_params']['reward_lambda']}"][
        "best_valid_score"] == max(trial["best_valid_score"] for trial in trials.values())
    assert len({run["pretrained_checkpoint"] for run in runs.values()}) == 1  # one BC stage, shared
    assert len(list((tmp_path / "saved").glob("HSTU-*-bc-*.pth"))) == 1


def test_missing_params_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    with pytest.raises(SystemExit) as exit_status:
        hyper.main(["--model=ExpRSFT", "--params_file=nowhere.hyper"])
    assert exit_status.value.code == 2
    assert "recbole-align: error: params_file [nowhere.hyper] does not exist." in capsys.readouterr().err
