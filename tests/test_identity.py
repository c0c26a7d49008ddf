"""A run's identity (recbole_align.identity) and the results version of the code
(recbole_align.results_version): what is checked before a finished run is reused or an interrupted one
resumed, and the rule that keeps the declared code in step with its sources."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import REPO, TINY

from recbole_align import results_version
from recbole_align.config import build_config
from recbole_align.data.fingerprint import file_fingerprint, package_version
from recbole_align.experiment.jobs import reuse_changes
from recbole_align.experiment.plan import Run
from recbole_align.identity import identity_changes, run_identity, run_settings
from recbole_align.registry import MODELS, PROPERTIES_DIR
from recbole_align.results_version import RESULTS_VERSION, SOURCE_DIGEST, code_version, source_digest


@pytest.fixture(autouse=True)
def no_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv (here pytest's options)


def test_the_declared_digest_is_the_code_of_the_result_sources():
    assert source_digest() == SOURCE_DIGEST, (
        f"the code of {results_version.RESULT_SOURCES} changed (digest {source_digest()}): if the change may move a "
        f"result, bump RESULTS_VERSION in recbole_align/results_version.py; either way set SOURCE_DIGEST = "
        f'"{source_digest()}" there (see its docstring)'
    )
    assert code_version() == f"v{RESULTS_VERSION}"


def test_the_digest_sees_code_and_not_docstrings_comments_or_layout(tmp_path):
    package = tmp_path / "recbole_align"
    shutil.copytree(results_version.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(package) == source_digest()
    module = package / "trainer" / "reward_weighted.py"
    text = module.read_text()
    module.write_text(text.replace('"""', '"""Reworded. ', 1) + "\n# a comment\n\n")
    assert source_digest.__wrapped__(package) == source_digest()
    module.write_text(text + "\nSCALE = 2\n")
    assert source_digest.__wrapped__(package) != source_digest()


def test_an_undeclared_change_runs_as_code_of_its_own(monkeypatch):
    monkeypatch.setattr(results_version, "SOURCE_DIGEST", "declared-for-other-code")
    assert code_version() == f"v{RESULTS_VERSION}+{source_digest()}"


def settings_of(model, **overrides):
    config, _ = build_config(model, "ml-100k", config_dict={"state": "ERROR", **overrides})
    return run_settings(config)


def test_the_settings_leave_out_where_a_run_runs_and_what_only_other_models_read():
    bc = settings_of("BC")
    # where it writes, how it logs and batches its evaluation; and ExpRSFT's key, which BC never reads
    assert settings_of("BC", checkpoint_dir="elsewhere", show_progress=True, eval_batch_size=7, reward_lambda=2.0) == bc
    assert "reward_lambda" not in bc and settings_of("ExpRSFT")["reward_lambda"] == 0.5
    assert settings_of("BC", learning_rate=0.002) != bc and settings_of("BC", seed=7) != bc
    assert settings_of("SASRec")["n_layers"] == 2  # RecBole's own yaml keys count (HSTU.yaml declares n_layers too)


def changed_yaml(tmp_path, source, key, value):
    """A copy of the yaml file ``source`` with ``key: value`` added last (it wins)."""
    path = tmp_path / source.name
    path.write_text(source.read_text() + f"\n{key}: {value}\n")
    return path


def test_a_changed_package_default_is_another_run(tmp_path, monkeypatch):
    config, _ = build_config("ExpRSFT", "ml-100k", config_dict={"state": "ERROR"})
    recorded = run_identity(config)
    default = changed_yaml(tmp_path, MODELS["ExpRSFT"].config_file, "reward_lambda", 2.0)
    monkeypatch.setitem(MODELS, "ExpRSFT", replace(MODELS["ExpRSFT"], config_file=default))
    config, _ = build_config("ExpRSFT", "ml-100k", config_dict={"state": "ERROR"})
    assert identity_changes(recorded, run_identity(config)) == ["reward_lambda 0.5 -> 2.0"]

    properties = tmp_path / "properties"
    shutil.copytree(PROPERTIES_DIR, properties)
    changed_yaml(properties, PROPERTIES_DIR / "overall.yaml", "eval_rating_threshold", 3.5)
    monkeypatch.setattr("recbole_align.config.PROPERTIES_DIR", properties)
    config, _ = build_config("ExpRSFT", "ml-100k", config_dict={"state": "ERROR", "reward_lambda": 0.5})
    assert identity_changes(recorded, run_identity(config)) == ["eval_rating_threshold 4.5 -> 3.5"]


def test_identity_changes_name_the_code_each_setting_data_file_and_the_start():
    recorded = {"settings": {"a": 1, "b": [1, 2]}, "data": {"d.inter": "8:aa"}, "start": "9:bb", "code": "v1"}
    assert identity_changes(recorded, json.loads(json.dumps(recorded))) == []
    current = {"settings": {"a": 2, "c": None}, "data": {"d.inter": "8:ab", "d.item": "3:cc"}, "start": "9:bc",
               "code": "v2"}
    assert identity_changes(recorded, current) == [
        "code v1 -> v2", "a 1 -> 2", "b [1, 2] -> 'unset'", "c 'unset' -> None", "d.inter 8:aa -> 8:ab",
        "d.item missing -> 3:cc", "start checkpoint 9:bb -> 9:bc",
    ]
    assert identity_changes(None, current) == ["it was recorded before runs recorded their identity"]
    many = {**current, "settings": {f"k{i}": i for i in range(9)}}
    assert identity_changes({**many, "settings": {}}, many)[-2:] == ["k5 'unset' -> 5", "3 more settings"]


def test_an_older_run_is_reused_only_when_asked_and_then_marked(tmp_path):
    inter = tmp_path / "d.inter"
    inter.write_text("a\tb\n1\t2\n")
    results_file = tmp_path / "run.json"
    results = {"model": "BC", "inputs": {"data": {str(inter): file_fingerprint(inter)}, "recbole_align": package_version()}}
    results_file.write_text(json.dumps(results))
    current = {"settings": {}, "data": {}, "start": None, "code": "v1"}
    run = Run("BC", "BC", 2020, {}, results=results)
    assert reuse_changes(run, results_file, current, reuse_older=False) == ["it was recorded before runs recorded their identity"]
    assert not run.older
    assert reuse_changes(run, results_file, current, reuse_older=True) == [] and run.older
    inter.write_text("a\tb\n1\t3\n")  # its recorded data changed: not reused even when asked
    assert reuse_changes(Run("BC", "BC", 2020, {}, results=results), results_file, current, True)[0].startswith(
        "changed since: d.inter")
    recorded = {**current, "settings": {"seed": 1}}
    run = Run("BC", "BC", 2020, {}, results={"identity": recorded})
    assert reuse_changes(run, results_file, current, reuse_older=True) == ["seed 1 -> 'unset'"] and not run.older


@pytest.mark.slow
def test_the_harness_trains_again_after_a_default_a_data_file_or_the_code_changed(tmp_path, ml100k_slice):
    """The user's story: a benchmark run twice reuses its runs; then a package default (ExpRSFT's λ), a data file
    and the code of a result source change in turn, and each time exactly the runs they shaped train again."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "recbole_align", checkout / "recbole_align", ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "data"
    shutil.copytree(ml100k_slice, data)
    args = ["--dataset=ml-100k-slice", f"--data_path={data}", "--seeds=[2020]", "--methods=[BC,ExpRSFT]",
            "--baselines=[]", "--bc_epochs=1", "--epochs=1", f"--output_dir={tmp_path / 'out'}",
            *(arg for arg in TINY if not arg.startswith("--epochs="))]

    def benchmark():
        """{row: its progress line, and "log": stdout} of one invocation of the benchmark from the checkout."""
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        process = subprocess.run([sys.executable, "-m", "recbole_align", "benchmark", *args], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
        assert process.returncode == 0, process.stderr[-3000:]
        lines = process.stdout.splitlines()
        rows = {label: next(line for line in lines if f"] {label} seed 2020:" in line) for label in ("BC", "ExpRSFT")}
        return {**rows, "log": process.stdout}

    first = benchmark()
    assert "reused" not in first["BC"] and "reused" not in first["ExpRSFT"]
    again = benchmark()
    assert "(reused)" in again["BC"] and "(reused)" in again["ExpRSFT"]

    method_yaml = checkout / "recbole_align" / "properties" / "model" / "ExpRSFT.yaml"
    method_yaml.write_text(method_yaml.read_text() + "\nreward_lambda: 2.0\n")
    default_changed = benchmark()
    assert "(reused)" in default_changed["BC"] and "(reused)" not in default_changed["ExpRSFT"]
    assert "ExpRSFT seed 2020: running again, reward_lambda 0.5 -> 2.0\n" in default_changed["log"]

    inter = data / "ml-100k-slice" / "ml-100k-slice.inter"
    inter.write_text("\n".join(inter.read_text().splitlines()[:-40]) + "\n")  # the user removes some ratings
    data_changed = benchmark()
    assert "(reused)" not in data_changed["BC"] and "(reused)" not in data_changed["ExpRSFT"]
    assert "BC seed 2020: running again, ml-100k-slice.inter " in data_changed["log"]
    assert "start checkpoint " in next(line for line in data_changed["log"].splitlines()
                                      if line.startswith("ExpRSFT seed 2020: running again"))

    module = checkout / "recbole_align" / "trainer" / "reward_weighted.py"
    module.write_text(module.read_text() + "\nSCALE = 2\n")
    code_changed = benchmark()
    assert "(reused)" not in code_changed["BC"] and "(reused)" not in code_changed["ExpRSFT"]
    assert f"BC seed 2020: running again, code v{RESULTS_VERSION} -> v{RESULTS_VERSION}+" in code_changed["log"]
