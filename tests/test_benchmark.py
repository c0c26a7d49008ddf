"""The benchmark runner (recbole_align.benchmark): outputs, resume and the table formatter."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO, TINY, markdown_lines
from recbole_align.benchmark import parse_budgets, parse_list
from recbole_align.report import format_table
from recbole_align.compat import load_checkpoint
from recbole_align.errors import AlignError

METRICS = ("hit@10", "hit@50", "ndcg@10", "ndcg@50", "mrr")


def test_format_table_means_stds_changes_and_bold_best():
    rows = {
        "BC": {"ndcg": (0.2, 0.01), "mrr": (0.1, 0.0), "seeds": 3},
        "ExpRSFT": {"ndcg": (0.25, 0.02), "mrr": (0.09, 0.001), "seeds": 3},
        "SASRec": {"ndcg": (0.1, 0.0), "mrr": None, "seeds": 3},
    }
    assert markdown_lines(format_table(rows, [("NDCG@10", "ndcg"), ("MRR", "mrr")])) == [
        "| Method | NDCG@10 | MRR |",
        "|---|---|---|",
        "| BC | 0.2000 ± 0.0100 | **0.1000 ± 0.0000** |",
        "| ExpRSFT | **0.2500 ± 0.0200** (+25.0%) | 0.0900 ± 0.0010 (-10.0%) |",
        "| SASRec | 0.1000 ± 0.0000 (-50.0%) | n/a |",
    ]
    one_seed = {"BC": {"ndcg": (0.2, 0.0), "seeds": 1}, "DPO": {"ndcg": (0.1, 0.0), "seeds": 1}}
    assert markdown_lines(format_table(one_seed, [("NDCG@10", "ndcg")], bold_best=False))[2:] == [
        "| BC | 0.2000 |", "| DPO | 0.1000 (-50.0%) |",
    ]


def test_parse_list():
    assert parse_list("[2020,2021]", "seeds", int) == [2020, 2021]
    assert parse_list("[BC,ExpRSFT]", "methods") == ["BC", "ExpRSFT"]
    with pytest.raises(AlignError, match="--seeds"):
        parse_list("[]", "seeds", int)


def benchmark_command(data_path, *args):
    """The benchmark on the slice: BC, Exp-RSFT, a λ run and GRU4Rec, tiny, 1 epoch each (``args`` on top)."""
    command = [
        sys.executable, "-m", "recbole_align.benchmark", "--dataset=ml-100k-slice", f"--data_path={data_path}",
        "--seeds=[2020]", "--methods=[BC,ExpRSFT]", "--baselines=[GRU4Rec]", "--baseline_epochs=1",
        "--sweep_lambda=[1]", "--bc_epochs=2",
        "--output_dir=out", *[arg for arg in TINY if not arg.startswith("--epochs")], "--epochs=1", *args,
    ]
    return command, {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}


def benchmark(cwd, data_path, *args):
    command, env = benchmark_command(data_path, *args)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env, timeout=600, check=False)


@pytest.mark.slow
def test_runner_writes_every_output_and_resumes(tmp_path, ml100k_slice):
    process = benchmark(tmp_path, ml100k_slice, "--jobs=2")
    assert process.returncode == 0, process.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("table.md", "table.csv", "table_final.csv", "unfiltered.csv", "reward_model.csv", "cost.csv", "epochs.png",
                 "lambda_sweep.png", "baselines.png", "paired_final.csv", "paired_best.csv"):
        assert (out / name).is_file(), name
    runs = sorted((out / "runs").glob("*.json"))
    assert sorted(p.name.split("-seed")[0] for p in runs) == ["BC", "ExpRSFT", "ExpRSFT-lambda1", "GRU4Rec"]
    table = "\n".join(markdown_lines((out / "table.md").read_text()))
    for heading in ("Table 3 at the final epoch", "Table 3 at the best validation epoch", "Unfiltered", "Table 2",
                    "Cost", "λ sweep", "held-out item's timestamp", "Paired differences at the final epoch"):
        assert heading in table
    paired = pd.read_csv(out / "paired_final.csv")
    exprsft = paired[(paired.a == "ExpRSFT") & (paired.b == "BC") & (paired.metric == "ndcg@10") & (paired.seed == "pooled")]
    assert len(exprsft) == 1 and exprsft.low.item() <= exprsft.difference.item() <= exprsft.high.item()
    assert exprsft.difference.item() == pytest.approx(exprsft.mean_a.item() - exprsft.mean_b.item())
    assert "| BC | " in table and "| ExpRSFT | " in table and "| GRU4Rec | " in table and "Avg Reward" in table
    assert "| stopped early |" in table and table.count(" | 0/1 |") == 4  # 1-epoch budgets: none converged
    assert process.stdout.count(" left") == 4  # one progress line per run

    stamps = {p: p.stat().st_mtime for p in runs}
    again = benchmark(tmp_path, ml100k_slice)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("(reused)") == 4
    assert {p: p.stat().st_mtime for p in sorted((out / "runs").glob("*.json"))} == stamps


def test_a_run_is_named_by_everything_that_decides_it(tmp_path):
    """The hash in a run's file name: another config (a user's override, a setting, the seed, a config
    file's text) is another run; the same is the same run, reused."""
    from recbole_align.experiment.plan import Run
    from recbole_align.experiment.jobs import run_hash

    yaml = tmp_path / "a.yaml"
    yaml.write_text("hidden_size: 8\n")
    run = lambda seed=2020, **settings: Run("ExpRSFT", "ExpRSFT", seed, {"epochs": 1, **settings})  # noqa: E731
    base = run_hash(run(), "ml-100k", [yaml], ["--hidden_size=8"])
    assert run_hash(run(), "ml-100k", [yaml], ["--hidden_size=8"]) == base
    assert len({base, run_hash(run(), "ml-100k", [yaml], ["--hidden_size=8", "--learning_rate=0.01"]),
                run_hash(run(2021), "ml-100k", [yaml], ["--hidden_size=8"]),
                run_hash(run(reward_lambda=1), "ml-100k", [yaml], ["--hidden_size=8"]),
                run_hash(run(), "ml-1m-half", [yaml], ["--hidden_size=8"])}) == 5
    yaml.write_text("hidden_size: 16\n")
    assert run_hash(run(), "ml-100k", [yaml], ["--hidden_size=8"]) != base


def test_a_run_planned_under_two_labels_is_run_once(tmp_path, monkeypatch):
    """A swept λ that is the tuned one is the tuned row's run (same model, seed and settings: same hash):
    its finished results are reused under the other label; another λ is another run."""
    from recbole_align.experiment import jobs
    from recbole_align.experiment.plan import Run

    identity = {"code": "c", "settings": {"reward_lambda": 0.5}, "data": {}, "start": None}
    monkeypatch.setattr(jobs, "planned_config", lambda *args: None)
    monkeypatch.setattr(jobs, "run_identity", lambda config, cwd: identity)
    started = []
    monkeypatch.setattr(jobs.subprocess, "run",
                        lambda command, **kwargs: started.append(command) or subprocess.CompletedProcess(command, 1))
    settings = {"epochs": 1, "learning_rate": 1e-4, "reward_lambda": 0.5}
    tuned = Run("ExpRSFT", "ExpRSFT", 2020, dict(settings))
    (tmp_path / "runs").mkdir()
    finished = tmp_path / "runs" / f"ExpRSFT-seed2020-{jobs.run_hash(tuned, 'd', [], [])}.json"
    finished.write_text(json.dumps({"identity": identity, "cases_file": "c.npz"}))
    swept = Run("ExpRSFT λ=0.5", "ExpRSFT", 2020, dict(settings), sweep_lambda=0.5)
    assert jobs.execute(swept, "d", tmp_path, [], []) == 0.0 and not started
    assert swept.results_file == finished and swept.results["cases_file"] == "c.npz"
    other = Run("ExpRSFT λ=1", "ExpRSFT", 2020, {**settings, "reward_lambda": 1}, sweep_lambda=1)
    jobs.execute(other, "d", tmp_path, [], [])
    assert len(started) == 1 and other.results_file.name.startswith("ExpRSFT-lambda1-seed2020-")
    identity["code"] = "changed"  # a stale twin is its own row's to train again: this row keeps its own name
    again = Run("ExpRSFT λ=0.5", "ExpRSFT", 2020, dict(settings), sweep_lambda=0.5)
    jobs.execute(again, "d", tmp_path, [], [])
    assert len(started) == 2 and again.results is None and finished.is_file()
    assert again.results_file.name.startswith("ExpRSFT-lambda0.5-seed2020-")


def test_parse_budgets():
    assert parse_budgets("300", ["SASRec", "GRU4Rec"]) == {"SASRec": 300, "GRU4Rec": 300}
    assert parse_budgets("SASRec:5,100", ["SASRec", "GRU4Rec"]) == {"SASRec": 5, "GRU4Rec": 100}
    assert parse_budgets("SASRec:5", ["SASRec", "GRU4Rec"]) == {"SASRec": 5, "GRU4Rec": 300}
    for bad in ("0", "SASRec:x", "NARM:5", "-3"):
        with pytest.raises(AlignError, match="--baseline_epochs"):
            parse_budgets(bad, ["SASRec", "GRU4Rec"])


@pytest.mark.slow
def test_interrupted_baseline_resumes_from_its_last_epoch(tmp_path, ml100k_slice):
    """A baseline killed mid-training (after its first validated epoch) goes on from its ``.last.pth``
    when the command is run again, and ends where an uninterrupted run of the same command ends."""
    args = ("--methods=[BC]", "--sweep_lambda=", "--bc_epochs=1", "--baseline_epochs=GRU4Rec:5", "--hidden_size=8")
    reference = benchmark(tmp_path, ml100k_slice, *args)  # uninterrupted, in tmp_path/out
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "again" / "out"
    (out / "runs").mkdir(parents=True)
    for bc in (tmp_path / "out" / "runs").glob("BC-*.json"):  # BC is reused: only GRU4Rec runs again
        (out / "runs" / bc.name).write_text(bc.read_text())
    command, env = benchmark_command(ml100k_slice, *args)
    process = subprocess.Popen(command, cwd=tmp_path / "again", env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, last_state = time.time() + 300, []
    while not last_state and process.poll() is None and time.time() < deadline:
        last_state = list((out / "checkpoints").glob("GRU4Rec-*.last.pth"))
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert last_state and not list((out / "runs").glob("GRU4Rec-*.json"))  # killed mid-training
    done = load_checkpoint(last_state[0])["resume"]["epoch_log"]

    resumed = benchmark(tmp_path / "again", ml100k_slice, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "GRU4Rec seed 2020" in resumed.stdout and "(resumed)" in resumed.stdout
    [finished], [uninterrupted] = ([json.loads(p.read_text()) for p in (o / "runs").glob("GRU4Rec-*.json")]
                                   for o in (out, tmp_path / "out"))
    untimed = [[{k: v for k, v in e.items() if k != "train_seconds"} for e in r["epoch_log"]]
               for r in (finished, uninterrupted)]
    assert untimed[0] == untimed[1] and len(untimed[0]) > len(done)
    assert finished["epoch_log"][:len(done)] == done  # those epochs were not trained again
    assert finished["test_filtered"] == uninterrupted["test_filtered"]


@pytest.mark.slow
def test_runner_refuses_keys_it_sets_itself(tmp_path, ml100k_slice):
    process = benchmark(tmp_path, ml100k_slice, "--seed=1")
    assert process.returncode == 2 and "sets ['seed'] itself" in process.stderr


def test_remaining_time_uses_finished_runs_of_the_same_kind():
    from recbole_align.experiment.plan import Run
    from recbole_align.experiment.jobs import remaining_seconds

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
    (["--epochs=0"], "--epochs must be a positive integer"),
    (["--baselines=[SASRec]", "--baseline_epochs=0"], "--baseline_epochs takes N or Model:N"),
])
def test_runner_bad_options_fail_before_any_run(tmp_path, capsys, args, message):
    from recbole_align.benchmark import main

    with pytest.raises(SystemExit) as exit_info:
        main([f"--output_dir={tmp_path / 'out'}", "--baselines=[]", *args])  # a later --baselines wins
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_methods_take_a_method_or_one_row_and_bc_trains_to_its_plateau_or_its_budget():
    from recbole_align.experiment.plan import BC_PLATEAU, bc_run
    from recbole_align.experiment.methods import method_rows

    assert [label for label, _, _ in method_rows(["BC", "RSFT", "ExpRSFT"])] == [
        "RSFT", "RSFT rescaled", "RSFT standardised", "ExpRSFT"]
    assert [label for label, _, _ in method_rows(["RSFT", "RSFT rescaled"])] == ["RSFT", "RSFT rescaled", "RSFT standardised"]
    rows = method_rows(["RSFT standardised", "ExpRSFT trajectory", "RSFT trajectory"])
    assert rows == [("RSFT standardised", "RSFT", {"standardize_rewards": True}),
                    ("ExpRSFT trajectory", "ExpRSFT", {"reward_scope": "trajectory"}),
                    ("RSFT trajectory", "RSFT", {"reward_scope": "trajectory"})]
    plateau = bc_run(2020, "HSTU", None).settings
    assert {key: plateau[key] for key in BC_PLATEAU} == BC_PLATEAU and plateau["valid_cases"] == "all"
    assert plateau["stopping_step"] < plateau["epochs"]  # stops on the curve, within the budget
    fixed = bc_run(2020, "HSTU", 5).settings
    assert fixed["epochs"] == fixed["stopping_step"] == 5  # exactly 5 epochs: no early stopping


def test_tuning_gives_every_row_the_same_grid_and_the_choice_reuses_its_trial():
    from recbole_align.experiment.methods import grid
    from recbole_align.experiment.plan import plan, tuning_plan
    from recbole_align.experiment.jobs import run_hash
    from recbole_align.experiment.aggregate import tuning_choice

    methods = ["BC", "ExpRSFT", "RSFT", "PPO"]
    trials = tuning_plan(2020, methods, "HSTU", 2, 3)
    labels = [t.label for t in trials]
    assert labels[0] == "BC" and {labels.count(label) for label in ("ExpRSFT", "RSFT", "RSFT rescaled", "PPO")} == {8}
    assert all(t.settings["epochs"] == t.settings["stopping_step"] == 3 for t in trials[1:])  # fixed budget
    assert all(t.settings["rescale_rewards"] for t in trials if t.label == "RSFT rescaled")
    for index, trial in enumerate(trials[1:]):  # a made-up valid score per trial
        trial.results = {"valid_filtered": {"ndcg@10": (index * 7 % 11) / 100}}
    chosen = tuning_choice(trials)
    for label in ("ExpRSFT", "RSFT", "RSFT rescaled", "PPO"):
        scores = [t.results["valid_filtered"]["ndcg@10"] for t in trials if t.label == label]
        best = next(t for t in trials if t.label == label and t.results["valid_filtered"]["ndcg@10"] == max(scores))
        assert chosen[label] == {key: best.settings[key] for key in grid(label)[0]}
        final = next(r for r in plan([2020, 2021], methods, [], [], "HSTU", 2, 3, 50, chosen)
                     if r.label == label and r.seed == 2020)
        assert run_hash(final, "d", [], []) == run_hash(best, "d", [], [])  # the tuning seed's run is reused


def test_every_tuning_trial_is_one_its_trainer_accepts_and_only_refused_values_are_left_out():
    from recbole_align.config import build_config
    from recbole_align.errors import AlignError
    from recbole_align.experiment.methods import METHOD_TABLE, all_rows, grid

    for label, (_, model, settings) in all_rows().items():
        trials = grid(label)
        refused = METHOD_TABLE[model].refused.get(label, {})
        assert len(trials) == 8 // 2 ** sum(len(values) for values in refused.values()), label
        for trial in trials:  # each builds (the trainers' checks run when the config is built)
            build_config(model, "ml-100k", config_dict={**settings, **trial, "state": "ERROR"})
        for key, values in refused.items():  # what is left out is refused, so the narrowing is needed
            for value in values:
                with pytest.raises(AlignError, match=key):
                    build_config(model, "ml-100k", config_dict={**settings, **trials[0], key: value, "state": "ERROR"})
    assert {label: len(grid(label)) for label in ("RSFT", "RSFT standardised", "RSFT trajectory")} == {
        "RSFT": 8, "RSFT standardised": 4, "RSFT trajectory": 4}


def test_each_row_is_compared_with_bc_its_own_control_and_its_method():
    from recbole_align.experiment.aggregate import comparisons
    from recbole_align.experiment.methods import all_rows
    from recbole_align.experiment.plan import Run

    def pairs(labels):
        runs = [Run(label, all_rows()[label][1] if label in all_rows() else label, 2020, {}) for label in labels]
        found = comparisons(runs, labels)
        assert len(found) == len(set(found)) and all(a != b for a, b in found)
        return set(found)

    exact = pairs(["BC", "ContinuedBC", "ContinuedBC exact", "ExpRSFT", "ExpRSFT exact"])
    assert exact == {("ContinuedBC", "BC"), ("ContinuedBC exact", "BC"), ("ExpRSFT", "BC"), ("ExpRSFT exact", "BC"),
                     ("ExpRSFT", "ContinuedBC"), ("ExpRSFT exact", "ContinuedBC exact"),  # the control of the same loss
                     ("ExpRSFT", "ContinuedBC exact"), ("ExpRSFT exact", "ContinuedBC"),  # and the other control
                     ("ContinuedBC exact", "ContinuedBC"), ("ExpRSFT exact", "ExpRSFT")}  # a named row vs its method
    paper = pairs(["BC", "ContinuedBC", "ExpRSFT", "RSFT", "RSFT rescaled"])
    assert paper == {("ContinuedBC", "BC"), ("ExpRSFT", "BC"), ("RSFT", "BC"), ("RSFT rescaled", "BC"),
                     ("ExpRSFT", "ContinuedBC"), ("RSFT", "ContinuedBC"), ("RSFT rescaled", "ContinuedBC"),
                     ("ExpRSFT", "RSFT"), ("ExpRSFT", "RSFT rescaled")}
    assert pairs(["BC", "ExpRSFT trajectory", "RSFT trajectory"]) == {
        ("ExpRSFT trajectory", "BC"), ("RSFT trajectory", "BC"), ("ExpRSFT trajectory", "RSFT trajectory")}
    # no Exp-RSFT vs RSFT across losses or scopes; a row without a control of its own loss meets the other's;
    # a baseline is compared with BC and the control
    assert pairs(["BC", "ContinuedBC", "ExpRSFT exact", "RSFT", "ExpRSFT trajectory", "SASRec"]) == {
        ("ContinuedBC", "BC"), ("ExpRSFT exact", "BC"), ("RSFT", "BC"), ("ExpRSFT trajectory", "BC"),
        ("SASRec", "BC"), ("RSFT", "ContinuedBC"), ("ExpRSFT trajectory", "ContinuedBC"), ("SASRec", "ContinuedBC"),
        ("ExpRSFT exact", "ContinuedBC")}


def test_final_epoch_view_reads_the_last_logged_epoch():
    from recbole_align.experiment.plan import Run
    from recbole_align.experiment.aggregate import aggregate

    def results(final_ndcg, best_epoch):
        log = [{"epoch": e, "test_filtered": {key: 0.1 * (e + 1) for key in METRICS}} for e in range(3)]
        log[-1]["test_filtered"] = {key: final_ndcg for key in METRICS}
        return {"test_filtered": {key: 0.2 for key in METRICS}, "epoch_log": log, "best_epoch": best_epoch,
                "avg_reward": 3.0, "config": {"epochs": 3}, **dict.fromkeys(("seconds_per_epoch", "epochs_run", "train_seconds", "peak_memory_mb"), 1.0)}

    runs = [Run("PPO", "PPO", seed, {}, results(value, 1)) for seed, value in ((1, 0.05), (2, 0.07))]
    best, final = aggregate(runs, "test_filtered")["PPO"], aggregate(runs, "test_filtered", "final")["PPO"]
    assert best["ndcg@10"] == (0.2, 0.0) and best["epoch"] == (1.0, 0.0) and best["avg_reward"] == (3.0, 0.0)
    assert final["ndcg@10"] == pytest.approx((0.06, 0.01)) and final["epoch"] == (2.0, 0.0)
    assert final["avg_reward"] is None  # measured on the saved (best) checkpoint only


def test_final_table_keeps_bc_at_its_best_epoch_and_epochs_plain():
    from recbole_align.experiment.plan import Run
    from recbole_align.experiment.aggregate import table3

    def results(best_ndcg, final_ndcg, epochs):
        log = [{"epoch": e, "test_filtered": {key: final_ndcg for key in METRICS}} for e in range(epochs)]
        return {"test_filtered": {key: best_ndcg for key in METRICS}, "epoch_log": log, "best_epoch": 0,
                "config": {"epochs": epochs}, **dict.fromkeys(("seconds_per_epoch", "epochs_run", "train_seconds", "peak_memory_mb"), 1.0)}

    runs = [Run("BC", "BC", 1, {}, results(0.2, 0.1, 12)), Run("PPO", "PPO", 1, {}, results(0.3, 0.05, 4))]
    final = table3(runs, "test_filtered", "final", ["BC", "PPO"])
    assert final["BC"]["ndcg@10"] == (0.2, 0.0) and final["BC"]["epoch"] == (0.0, 0.0)  # the starting checkpoint
    assert final["PPO"]["ndcg@10"] == (0.05, 0.0) and final["PPO"]["epoch"] == (3.0, 0.0)
    lines = markdown_lines(format_table(final, [("NDCG@10", "ndcg@10"), ("epoch", "epoch")]))
    assert lines[2:] == ["| BC | **0.2000** | 0.0 |", "| PPO | 0.0500 (-75.0%) | 3.0 |"]


def test_a_tuned_benchmark_sweeps_around_its_choice():
    from recbole_align.experiment.plan import plan

    tuned = {"ExpRSFT": {"learning_rate": 1e-4, "dropout_prob": 0.2, "reward_lambda": 0.5},
             "DRPO": {"learning_rate": 1e-3, "dropout_prob": 0.0}}
    runs = {run.label: run.settings for run in plan([1], ["BC", "ExpRSFT", "DRPO"], [], [0.25, 4], "HSTU", None, 3, {},
                                                    tuned, noise_levels=[0, 1])}
    assert runs["ExpRSFT"]["reward_lambda"] == 0.5
    assert runs["ExpRSFT λ=0.25"] == {**runs["ExpRSFT"], "reward_lambda": 0.25}
    assert runs["ExpRSFT λ=4 σ=1"] == {**runs["ExpRSFT"], "reward_lambda": 4, "reward_noise_std": 1}
    assert runs["DRPO σ=1"] == {**runs["DRPO"], "reward_noise_std": 1}
    assert "learning_rate" not in runs["RSFT rescaled σ=1"]  # no choice for its row: its defaults
    untuned = {run.label: run.settings for run in plan([1], ["BC"], [], [4], "HSTU", None, 3, {})}
    assert set(untuned["ExpRSFT λ=4"]) == {"backbone", "seed", "epochs", "stopping_step", "reward_lambda"}


def test_noise_sweep_rows_tables_and_picked_lambdas(tmp_path):
    from recbole_align.experiment.plan import Run, noise_rows, plan
    from recbole_align.experiment.tables import noise_section

    rows = noise_rows([0.5, 2], [0, 1])
    assert [label for label, *_ in rows] == [
        "ExpRSFT λ=0.5", "ExpRSFT λ=2", "RSFT rescaled", "DRPO", "ExpRSFT λ=0.5 σ=1", "ExpRSFT λ=2 σ=1",
        "RSFT rescaled σ=1", "DRPO σ=1"]
    assert rows[4][2:] == ({"reward_lambda": 0.5, "reward_noise_std": 1}, 0.5, 1) and rows[3][2:] == ({}, None, 0)
    assert rows[6][1:] == ("RSFT", {"rescale_rewards": True, "reward_noise_std": 1}, None, 1)
    planned = plan([1], ["BC", "RSFT"], [], [0.5, 2], "HSTU", None, 3, {}, noise_levels=[0, 1])
    labels = [run.label for run in planned]
    assert len(labels) == len(set(labels)) and {"RSFT", "RSFT rescaled", "DRPO", "DRPO σ=1"} <= set(labels)
    assert next(run for run in planned if run.label == "RSFT rescaled").settings["rescale_rewards"] is True

    def results(test, valid):  # a 1-epoch run: its final epoch is its best
        test, valid = dict.fromkeys(METRICS, test), dict.fromkeys(METRICS, valid)
        log = [{"epoch": 0, "test_filtered": test, "valid_filtered": valid}]
        return {"test_filtered": test, "valid_filtered": valid, "epoch_log": log,
                "best_epoch": 0, "config": {"epochs": 1}, **dict.fromkeys(("seconds_per_epoch", "epochs_run",
                                                                          "train_seconds", "peak_memory_mb"), 1.0)}

    scores = {  # σ = 0 favours λ = 0.5 on test and valid; σ = 1 favours λ = 2 on test, 0.5 on valid
        "BC": (0.1, 0.1), "ExpRSFT λ=0.5": (0.3, 0.3), "ExpRSFT λ=2": (0.2, 0.2), "RSFT rescaled": (0.15, 0.1),
        "DRPO": (0.1, 0.1), "ExpRSFT λ=0.5 σ=1": (0.1, 0.25), "ExpRSFT λ=2 σ=1": (0.2, 0.2), "RSFT rescaled σ=1": (0.05, 0.1),
    }  # DRPO σ=1 did not finish
    runs = [Run(label, label.split()[0], 1, {}, results(*score)) for label, score in scores.items()]
    parts = noise_section(runs, [0.5, 2], [0, 1], tmp_path, "toy")
    final = markdown_lines(parts[1])
    assert final[0] == "| Row | σ=0 | σ=1 |"
    assert "| ExpRSFT λ=2 | 0.2000 ± 0.0000 | 0.2000 ± 0.0000 |" in final and "| DRPO | 0.1000 ± 0.0000 | n/a |" in final
    assert final[-2:] == ["| λ picked by test NDCG@10 | 0.5 | 2 |", "| λ picked by valid NDCG@10 | 0.5 | 0.5 |"]
    csv = pd.read_csv(tmp_path / "noise_sweep.csv")
    assert len(csv) == 2 * 7 and set(csv.view) == {"final", "best"}
    assert (tmp_path / "noise_sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_parallel_jobs_run_every_bc_before_the_methods_that_start_from_it(monkeypatch, tmp_path):
    from recbole_align.experiment import jobs
    from recbole_align.experiment.plan import plan

    started, lock = [], __import__("threading").Lock()

    def fake_execute(run, dataset, output_dir, config_files, user_args, reuse_older=False):
        with lock:
            started.append((run.label, run.seed, run.settings.get("pretrained_checkpoint")))
        time.sleep(0.01)
        run.results = {"checkpoint": f"bc-{run.seed}.pth", "test_filtered": {"ndcg@10": 0.1}}
        return 1.0

    monkeypatch.setattr(jobs, "execute", fake_execute)
    runs = plan([1, 2], ["BC", "ExpRSFT", "PPO"], [], [], "HSTU", 2, 3, {})
    jobs.execute_all(runs, [], "ml-100k", tmp_path, [], [], jobs=3)
    assert sorted(label for label, _, _ in started[:2]) == ["BC", "BC"] and len(started) == len(runs) == 6
    assert all(checkpoint == f"bc-{seed}.pth" for label, seed, checkpoint in started if label != "BC")


def test_tuned_from_runs_every_row_at_another_benchmarks_choice(monkeypatch, tmp_path, capsys):
    """The tuning.csv that --tune writes, read back as the same typed choice; the runs carry it, the table says
    where it came from, and a bad file or --tune beside it fail in one line before any run."""
    from recbole_align import benchmark
    from recbole_align.experiment.aggregate import chosen_in, tuning_choice, tuning_table
    from recbole_align.experiment.plan import tuning_plan
    from recbole_align.experiment.tables import given_choice_section
    from recbole_align.report import write_table

    trials = tuning_plan(2020, ["BC", "ExpRSFT", "RSFT"], "HSTU", 2, 3)
    for index, trial in enumerate(trials[1:]):
        trial.results = {"valid_filtered": {"ndcg@10": (index * 7 % 11) / 100}, "best_epoch": 1, "epoch_log": []}
    chosen = tuning_choice(trials)
    _, header, rows = tuning_table(trials, chosen)
    write_table(tmp_path / "tuning.csv", header, rows)
    assert chosen_in(tmp_path / "tuning.csv") == chosen and isinstance(chosen["ExpRSFT"]["learning_rate"], float)

    planned, written = [], {}
    monkeypatch.setattr(benchmark, "execute_all", lambda runs, *args, **kwargs: planned.extend(runs))
    monkeypatch.setattr(benchmark, "write_outputs", lambda *args: written.update(given=args[-1]) or "table")
    benchmark.main([f"--output_dir={tmp_path / 'out'}", "--baselines=[]", "--methods=[BC,ExpRSFT,DRPO]",
                    f"--tuned_from={tmp_path / 'tuning.csv'}"])
    exp = [r for r in planned if r.label == "ExpRSFT"]
    assert exp and all({k: r.settings[k] for k in chosen["ExpRSFT"]} == chosen["ExpRSFT"] for r in exp)
    assert written["given"] == {"ExpRSFT": chosen["ExpRSFT"]}  # DRPO: no choice there, its defaults
    section = given_choice_section(["ExpRSFT", "DRPO"], written["given"], "t.csv")
    assert section[0].endswith("(`--tuned_from t.csv`; no tuning here)")
    assert section[1].splitlines() == [f"- ExpRSFT: {', '.join(f'{k}={v}' for k, v in chosen['ExpRSFT'].items())}",
                                       "- DRPO: no choice there, its yaml defaults"]
    (tmp_path / "empty.csv").write_text(",".join(header) + "\n")
    for args, message in ((["--tune"], "give one of them"), ([], "marks no trial as chosen")):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main([f"--output_dir={tmp_path / 'bad'}", "--baselines=[]", f"--tuned_from={tmp_path / 'empty.csv'}", *args])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main([f"--output_dir={tmp_path / 'bad'}", "--baselines=[]", f"--tuned_from={tmp_path / 'none.csv'}"])
    assert "is not a benchmark's tuning.csv" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_epoch_curves_show_the_spread_and_a_collapsed_row_leaves_the_axis_to_the_others(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from recbole_align import report

    def run(label, seed, trace, best=None):
        log = [{"epoch": e, "valid_filtered": {"ndcg@10": v}, "test_filtered": {"ndcg@10": v}} for e, v in enumerate(trace)]
        results = {"epoch_log": log, "valid_filtered": {"ndcg@10": best}, "test_filtered": {"ndcg@10": best}}
        return SimpleNamespace(label=label, seed=seed, results=results)

    runs = [run("BC", 1, [], 0.20), run("BC", 2, [], 0.20),
            run("ExpRSFT", 1, [0.21, 0.22, 0.23]), run("ExpRSFT", 2, [0.19, 0.20, 0.21]),
            run("RSFT standardised", 1, [0.15, 0.05, 0.01]), run("RSFT standardised", 2, [0.15, 0.05, 0.03])]
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda plt, fig, path: figures.append(fig))
    report.plot_epochs(runs, ["BC", "ExpRSFT", "RSFT standardised"], tmp_path / "epochs.png", "toy")
    for ax in figures[0].axes[:2]:
        low, high = ax.get_ylim()
        assert 0.15 < low < 0.19 and 0.23 < high < 0.25  # ExpRSFT's band (0.19..0.23) and BC, not the collapse
        assert len(ax.collections) == 2  # a ± std band for each row with two seeds
        legend = [text.get_text() for text in ax.get_legend().get_texts()]
        assert "RSFT standardised (collapsed: 0.020 at the end)" in legend and "ExpRSFT" in legend
