"""Stages planned once (recbole_align.stages): what a plan settles before it builds each Config, that
nothing edits a planned Config afterwards, and that the BC stage is reused while its identity holds; and that the
tools above the runs (diagnostics, the benchmark) read the data where the runs' config files say."""

import contextlib
import io
import os
import sys
import warnings
from dataclasses import replace

import pytest

from recbole_align.config import command_line_overrides, json_safe
from recbole_align.diagnostics import PREDICTORS, run_diagnostics
from recbole_align.errors import AlignError
from recbole_align import results_version
from recbole_align.quick_start import run_bc_stage, run_stage
from recbole_align.registry import MODELS
from recbole_align.stages import plan_run
from conftest import tiny, write_atomic
from test_data_and_evaluation import generated_frame


@pytest.fixture(autouse=True)
def no_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv (here pytest's options)


def plan_of(model, tmp_path, *args):
    overrides = {**command_line_overrides(tiny("--topk=[10]", "--MAX_ITEM_LIST_LENGTH=5", *args)), "data_path": str(tmp_path / "data"),
                 "checkpoint_dir": str(tmp_path / "saved"), "state": "ERROR"}
    return plan_run(model, "gen", config_dict=overrides)


@pytest.fixture
def data(tmp_path):
    write_atomic(tmp_path / "data", "gen", generated_frame(n_users=30))
    return tmp_path


def test_a_post_training_run_without_a_checkpoint_plans_its_bc_stage_first(data):
    plan = plan_of("PPO", data, "--embedding_size=16")
    bc, run = plan.stages
    assert bc.config["model"] == "BC" and bc.config["reward_head"] is True  # PPO needs the reward head
    assert bc.config["checkpoint_file"] == str(bc.publish.with_suffix(".partial.pth"))
    assert bc.config["results_file"] == str(bc.publish.with_suffix(".json"))
    assert run.config["model"] == "PPO" and run.config["pretrained_checkpoint"] == str(bc.publish)
    assert run.config["reward_head"] is True and run.config["embedding_size"] == 16  # the BC stage's architecture
    assert bc.publish.name.startswith("HSTU-gen-bc-") and not bc.publish.exists()


def test_a_multi_process_run_settles_its_world_size_and_checkpoint_name_for_every_stage(data):
    bc, run = plan_of("DRPO", data, "--nproc=2").stages
    assert bc.config["world_size"] == run.config["world_size"] == 2
    assert bc.config["checkpoint_file"].endswith(".partial.pth") and run.config["checkpoint_file"].endswith(".pth")
    assert (plan_of("DRPO", data).run.config["world_size"], plan_of("DRPO", data).run.config["checkpoint_file"]) == (-1, None)


def snapshot(plan):
    return [json_safe(stage.config.final_config_dict) for stage in plan.stages]


def quietly(function, *args):
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def test_running_the_stages_edits_no_planned_config_and_the_next_plan_reuses_the_bc_checkpoint(data, monkeypatch):
    monkeypatch.chdir(data)  # RecBole's ./log
    plan = plan_of("ExpRSFT", data)
    before = snapshot(plan)
    quietly(run_bc_stage, plan)
    results = quietly(run_stage, plan.run)
    assert snapshot(plan) == before
    assert results["pretrained_checkpoint"] == str(plan.stages[0].publish) and plan.stages[0].publish.is_file()

    again = plan_of("ExpRSFT", data)
    assert len(again.stages) == 1 and again.run.notes[0] == f"BC stage: reusing {plan.stages[0].publish}"
    os.utime(data / "data" / "gen" / "gen.inter")  # touched, not changed: still reused
    assert len(plan_of("ExpRSFT", data).stages) == 1

    # a changed package default of BC's settings names another checkpoint; changed code retrains this one
    hstu = MODELS["HSTU"]
    with monkeypatch.context() as patch:
        default = data / "HSTU.yaml"
        default.write_text(hstu.config_file.read_text() + "\nlearning_rate: 0.002\n")
        patch.setitem(MODELS, "HSTU", replace(hstu, config_file=default))
        other = plan_of("ExpRSFT", data)
        assert len(other.stages) == 2 and other.stages[0].publish != plan.stages[0].publish
    with monkeypatch.context() as patch:
        patch.setattr(results_version, "SOURCE_DIGEST", "declared-for-other-code")
        changed = plan_of("ExpRSFT", data)
        assert len(changed.stages) == 2 and changed.stages[0].publish == plan.stages[0].publish
        assert f"not reusing {plan.stages[0].publish}: code v{results_version.RESULTS_VERSION} -> " in changed.stages[0].notes[0]


def test_a_given_checkpoint_lends_its_architecture_before_the_config_is_built(data, monkeypatch):
    monkeypatch.chdir(data)
    bc = quietly(run_stage, plan_of("BC", data, "--embedding_size=16", "--reward_head=True").run)
    plan = plan_of("RSFT", data, "--embedding_size=8", f"--pretrained_checkpoint={bc['checkpoint']}")
    (run,) = plan.stages
    assert run.config["embedding_size"] == 16 and run.config["reward_head"] is True
    assert "embedding_size = 16 from the pretrained checkpoint (config said 8)" in run.notes


def test_table_2_reads_the_data_where_the_runs_config_files_say(data, monkeypatch):
    """Diagnostics (and the benchmark's Table 2) build their dataset with the runs' config files: here the data
    folder is named only in one, relative to the working directory."""
    monkeypatch.chdir(data)
    bc = quietly(run_stage, plan_of("BC", data, "--embedding_size=8", "--reward_head=True").run)
    config_file = data / "gen.yaml"
    config_file.write_text("data_path: data\n")
    settings = {**command_line_overrides(tiny("--topk=[10]", "--MAX_ITEM_LIST_LENGTH=5")), "state": "ERROR"}
    tables = quietly(run_diagnostics, "gen", bc["checkpoint"], (), data / "out", settings, [str(config_file)])
    assert tables["n_test"] == 30 and set(tables["reward_model"]) == set(PREDICTORS)
    with pytest.raises(AlignError, match=r"Dataset \[gen\] not found"):
        quietly(run_diagnostics, "gen", bc["checkpoint"], (), data / "out", settings)


def test_the_benchmark_resolves_a_relative_data_path_of_its_config_files_where_it_runs(data, monkeypatch):
    """The runs' processes start in the output folder: a config file's relative data_path reaches them resolved."""
    import recbole_align.benchmark as benchmark

    class Planned(Exception):
        pass

    def planned(runs, baselines, dataset, output_dir, config_files, user_args, *args, **kwargs):
        raise Planned(user_args)

    monkeypatch.chdir(data)
    (data / "gen.yaml").write_text("data_path: data\n")
    monkeypatch.setattr(benchmark, "execute_all", planned)
    with pytest.raises(Planned) as caught:
        benchmark.main(["--dataset=gen", "--config_files=gen.yaml", "--baselines=[]", f"--output_dir={data / 'out'}"])
    assert f"--data_path={data / 'data'}" in caught.value.args[0]
