"""End-to-end runs of run_recbole_align.py and its clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, TINY, run_cli, run_in_process, tiny, with_overrides, write_atomic

from recbole_align import quick_start

METRICS = {"hit@10", "hit@50", "ndcg@10", "ndcg@50", "mrr"}


def held_out_ratings(data_path, name):
    """Each user's last rating in time order (file order breaks ties), from the raw atomic file."""
    frame = pd.read_csv(Path(data_path) / name / f"{name}.inter", sep="\t")
    frame = frame.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    return frame.groupby("user_id:token")["rating:float"].last()


def check_results(results, model, data_path):
    assert results["model"] == model and results["dataset"] == "ml-100k-slice" and results["seed"] == 2020
    for split in ("valid", "test", "valid_filtered", "test_filtered"):
        assert set(results[split]) == METRICS
        assert all(0 <= value <= 1 for value in results[split].values())
    last_ratings = held_out_ratings(data_path, "ml-100k-slice")
    assert results["n_test"] == len(last_ratings) == 60
    assert results["n_test_filtered"] == int((last_ratings >= 4.5).sum()) > 0
    assert Path(results["checkpoint"]).is_file()
    assert results["epochs_run"] == len(results["epoch_log"]) >= 1
    assert results["train_seconds"] > 0


@pytest.mark.slow
def test_hstu_end_to_end(tmp_path, ml100k_slice):
    process, results = run_cli(
        tmp_path, "--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *tiny("--epochs=2")
    )
    assert process.returncode == 0, process.stderr[-3000:]
    check_results(results, "HSTU", ml100k_slice)
    assert results["epochs_run"] == 2
    assert results["best_epoch"] in (0, 1)
    best = results["epoch_log"][results["best_epoch"]]
    assert best["valid_filtered"] == results["valid_filtered"]  # the best checkpoint was the one evaluated
    for split in ("test", "test_filtered"):  # per-epoch test metrics: those of the epoch's own weights
        assert best[split] == results[split]
        assert all(set(entry[split]) == METRICS for entry in results["epoch_log"])


@pytest.mark.parametrize("model, size", [
    ("SASRec", ["--hidden_size=8", "--inner_size=8", "--n_layers=1"]),
    ("FPMC", ["--embedding_size=8"]),  # BPR: trains on RecBole's sampled negatives (recbole_align/properties/baseline/FPMC.yaml)
])
@pytest.mark.slow
def test_recbole_baseline_through_the_same_entry_point(tmp_path, ml100k_slice, model, size):
    process, results = run_cli(
        tmp_path, f"--model={model}", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        "--epochs=1", "--MAX_ITEM_LIST_LENGTH=20", *size, "--train_batch_size=256", "--show_progress=False",
        "--state=ERROR",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    check_results(results, model, ml100k_slice)


def without_column(data_path, column, name):
    frame = pd.read_csv(Path(data_path) / "ml-100k-slice" / "ml-100k-slice.inter", sep="\t")
    return write_atomic(data_path, name, frame.drop(columns=[column]))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=NoSuchModel"], "Unknown model [NoSuchModel]"),
        (["--eval_rating_threshold=10"], "filtered valid set is empty"),
        (["--dataset=missing"], "Dataset [missing] not found"),
        (["--model=BPR"], "evaluates sequential recommenders"),
        (["--model=GRU4Rec", "--loss_type=BPR"], "needs sampled negatives: set train_neg_sample_args"),
        (["--config_files=nowhere.yaml"], "Config file [nowhere.yaml] does not exist"),
        (["--epochs=3", "--epochs=4"], "Bad configuration: --epochs given twice"),
        (["--epochs", "3"], "Unrecognised argument [--epochs]"),
        (["--model=ExpRSFT", "--backbone=NoSuchModel"], "Unknown model [NoSuchModel]"),
        (["--model=BC", "--backbone=BERT4Rec"], "backbone [BERT4Rec] cannot be post-trained"),
        (["--model=DPO", "--backbone=PPO"], "backbone [PPO] is itself a training method"),
        (["--mixed_precision=fp16"], "mixed_precision must be bf16 or ~"),
        (["--negative_sharing=user"], "negative_sharing must be one of"),
        (["--length_grouped_batches=True", "--length_group_size=0"], "length_group_size must be an integer >= 1"),
        # the RecBole keys users set most (recbole_align.config.SETTING_CHECKS), checked before any data is loaded
        (["--eval_rating_threshold=~", "--model=ExpRSFT", "--reward_lambda=-1"], "reward_lambda"),  # ~ is None
        (["--eval_rating_threshold=abc"], "eval_rating_threshold must be a number, or ~ for no rating filter; got 'abc'"),
        (["--epochs=-1"], "epochs must be an integer >= 0"),
        (["--epochs=2.5"], "epochs must be an integer >= 0"),
        (["--train_batch_size=0"], "train_batch_size must be a positive integer; got 0"),
        (["--eval_batch_size=-4"], "eval_batch_size must be a positive integer"),
        (["--learning_rate=0"], "learning_rate must be a number > 0"),
        (["--learning_rate=fast"], "learning_rate must be a number > 0"),
        (["--topk=[10,0]"], "topk must be a positive integer or a list of positive integers"),  # RecBole's check
        (["--topk=[5]"], "valid_metric NDCG@10 needs 10 in topk [5]: add it (e.g. --topk=[5,10])"),
        (["--MAX_ITEM_LIST_LENGTH=0"], "MAX_ITEM_LIST_LENGTH must be a positive integer"),
        (["--stopping_step=-1"], "stopping_step must be an integer >= 0"),
        (["--valid_cases=some"], "valid_cases must be filtered or all"),
        (["--catalogue_chunk_mb=0"], "catalogue_chunk_mb must be a number of MiB > 0; got 0"),
        # RecBole's own keys, by type (recbole_align.config.SETTING_CHECKS)
        (["--seed=abc"], "seed must be an integer from 0 to 2**32 - 1; got 'abc'"),
        (["--seed=-2"], "seed must be an integer from 0 to 2**32 - 1; got -2"),
        (["--metrics=[1,2]"], 'metrics must be a list of metric names, e.g. ["Hit", "NDCG"]; got [1, 2]'),
        (["--metrics=Recal"], "Bad configuration: NotImplementedError: There is no metric named 'Recal'"),
        (["--reproducibility=maybe"], "reproducibility must be True or False; got 'maybe'"),
        (["--learner=adamm"], "learner must be one of adam, adamw, sgd, adagrad, rmsprop, sparse_adam; got 'adamm'"),
        (["--weight_decay=-1"], "weight_decay must be a number >= 0; got -1"),
        (["--dropout_prob=1.5"], "dropout_prob must be a number in [0, 1); got 1.5"),
        (["--embedding_size=0"], "embedding_size must be a positive integer; got 0"),
        (["--state=loud"], "state must be a log level"),
        (["--eval_args=full"], "eval_args must be a mapping, e.g. {split: {LS: valid_and_test}, order: TO"),
        (["--enable_amp=True"], "enable_amp must be False (RecBole's fp16 autocast runs without a gradient scaler"),
        (["--reward_noise_std=-0.5"], "reward_noise_std must be a number >= 0 (0: no noise on the training ratings); got -0.5"),
        (["--model=ExpRSFT", "--reward_scope=trajectory", "--trajectory_length=0"], "trajectory_length must be a positive integer; got 0"),
        (["--model=ExpRSFT", "--reward_scope=foo"], "reward_scope must be item or trajectory; got 'foo'"),
        (["--valid_metric=FullMRR"], "valid_metric FullMRR is not among what metrics ['Hit', 'NDCG', 'FullMRR'] "
                                     "compute: choose one of hit@10, hit@50, mrr, ndcg@10, ndcg@50"),
        (["--valid_metric=Recall@10"], "valid_metric Recall@10 is not among what metrics"),
        (["--num_negatives=0"], "num_negatives must be a positive integer (sampled negatives per position); got 0"),
        (["--temperature=0"], "temperature must be a number > 0; got 0"),
        (["--eval_step=two"], "eval_step must be an integer (validation every eval_step epochs; <= 0: none); got 'two'"),
    ],
)
def test_clear_errors(tmp_path, ml100k_slice, args, message):
    """In this process (the command line itself is tested by the runs above and below)."""
    results_file = tmp_path / "results.json"
    base = ["--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *TINY, f"--results_file={results_file}"]
    status, lines = run_in_process(tmp_path, quick_start.main, *with_overrides(base, *args))
    assert status == 2 and len(lines) == 1, lines  # one line, no traceback
    assert lines[0].startswith("recbole-align: error: ") and message in lines[0], lines
    assert not results_file.exists()


@pytest.mark.parametrize(
    "column, message",
    [("rating:float", "needs a rating field"), ("timestamp:float", "needs a timestamp")],
)
@pytest.mark.slow
def test_missing_fields(tmp_path, ml100k_slice, column, message):
    name = f"no-{column.split(':')[0]}"
    data_path = without_column(ml100k_slice, column, name)
    process, results = run_cli(tmp_path, "--model=HSTU", f"--dataset={name}", f"--data_path={data_path}", *TINY)
    assert process.returncode == 2
    assert message in process.stderr and "Traceback" not in process.stderr
    assert results is None


def inf_rating(frame):
    return frame.assign(**{"rating:float": frame["rating:float"].where(frame.index != 7, float("inf"))})


def one_user_29_items(frame):
    return frame[frame["user_id:token"] == frame["user_id:token"].iloc[0]].head(29)


def three_interactions(frame):
    return frame.groupby("user_id:token").head(3)


@pytest.mark.parametrize("change, message", [
    (inf_rating, "1 rating(s) are not finite (inf)"),
    (three_interactions, "leaves no valid case: leave-one-out needs users with at least 4 interactions"),
    (one_user_29_items, "topk [10, 50] asks for 50 items, but dataset [changed] has only 29: set a smaller topk"),
])
@pytest.mark.slow
def test_unusable_data(tmp_path, ml100k_slice, change, message):
    frame = pd.read_csv(Path(ml100k_slice) / "ml-100k-slice" / "ml-100k-slice.inter", sep="\t")
    data_path = write_atomic(tmp_path / "data", "changed", change(frame))
    process, results = run_cli(tmp_path, "--model=HSTU", "--dataset=changed", f"--data_path={data_path}", *TINY)
    assert process.returncode == 2 and results is None
    assert message in process.stderr and "Traceback" not in process.stderr
    assert process.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_two_runs_started_together_in_one_folder(tmp_path, ml100k_slice):
    """RecBole 1.2.1 creates ./log racily (FileExistsError; recbole_align.compat.init_logger) and names
    both checkpoints <model>-<time>.pth when they start in the same second (the trainer adds the pid)."""
    command = [sys.executable, str(REPO / "run_recbole_align.py"), "--model=HSTU", "--dataset=ml-100k-slice",
               f"--data_path={ml100k_slice}", *TINY]
    processes = [subprocess.Popen([*command, f"--results_file={tmp_path / f'run{i}.json'}"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read()[-2000:]
    first, second = (json.loads((tmp_path / f"run{i}.json").read_text()) for i in range(2))
    assert first["checkpoint"] != second["checkpoint"]  # RecBole names both <model>-<time>.pth


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, ml100k_slice):
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        process, results = run_cli(
            tmp_path / name, "--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *tiny("--epochs=2")
        )
        assert process.returncode == 0, process.stderr[-2000:]
        runs.append(results)
    for split in ("valid", "test", "valid_filtered", "test_filtered"):
        assert runs[0][split] == runs[1][split]
    assert [e["train_loss"] for e in runs[0]["epoch_log"]] == [e["train_loss"] for e in runs[1]["epoch_log"]]


@pytest.mark.slow
@pytest.mark.parametrize("key", ["results_file", "checkpoint_dir"])
def test_unwritable_output_fails_before_training(tmp_path, ml100k_slice, key):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / ("r.json" if key == "results_file" else "saved")
    process = subprocess.run(
        [sys.executable, str(REPO / "run_recbole_align.py"), "--model=HSTU", "--dataset=ml-100k-slice",
         f"--data_path={ml100k_slice}", *TINY, f"--{key}={target}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == 2
    assert "cannot be created" in process.stderr and "Traceback" not in process.stderr
    assert not list(tmp_path.glob("**/*.pth"))  # nothing trained or saved


@pytest.mark.slow
def test_bf16_mixed_precision_trains(tmp_path, ml100k_slice):
    process, results = run_cli(
        tmp_path, "--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        *tiny("--mixed_precision=bf16", "--epochs=3"),
    )
    assert process.returncode == 0, process.stderr[-2000:]
    losses = [entry["train_loss"] for entry in results["epoch_log"]]
    assert results["config"]["mixed_precision"] == "bf16" and losses[-1] < losses[0]  # it learns in bf16


@pytest.mark.parametrize("text, message", [
    ("epochs: 2\nlearning_rate: [0.1\n", "is not valid yaml at line 3, column 1"),
    ("- epochs\n- 2\n", "must hold key: value lines (a yaml mapping), not a list"),
    ("epochs: 2\n  bad indent: 3\n", "is not valid yaml at line 2"),
])
def test_property_file_errors_name_the_file_and_line(tmp_path, ml100k_slice, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    status, lines = run_in_process(tmp_path, quick_start.main, "--model=HSTU", "--dataset=ml-100k-slice",
                                   f"--data_path={ml100k_slice}", f"--config_files={bad}", *TINY)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"recbole-align: error: Config file [{bad}]") and message in lines[0], lines


def test_an_unknown_key_in_a_property_file_warns_with_the_closest_known_one(tmp_path, ml100k_slice):
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rat: 0.01\nepochs: 0\n")
    status, lines = run_in_process(tmp_path, quick_start.main, "--model=HSTU", "--dataset=ml-100k-slice",
                                   f"--data_path={ml100k_slice}", f"--config_files={typo}", *tiny("--epochs=0"))
    warning = f"recbole-align: warning: [{typo}] sets [learning_rat], which no RecBole or recbole-align code reads; " \
              "did you mean [learning_rate]?"
    assert status == 0 and lines == [warning], lines


@pytest.mark.parametrize("args, message", [
    (["--model=PPO", "--num_samples=1"], "num_samples must be an integer >= 2 (PPO and GRPO compare the rewards"),
    (["--model=PPO", "--sampling_temperature=0"], "sampling_temperature must be a number > 0; got 0"),
    (["--model=GRPO", "--kl_coef=-0.1"], "kl_coef must be a number >= 0 (the weight of the KL penalty); got -0.1"),
    (["--model=PPO", "--ppo_epochs=0"], "ppo_epochs must be a positive integer; got 0"),
    (["--model=DPO", "--dpo_beta=0"], "dpo_beta must be a number > 0; got 0"),
    (["--model=GRPO", "--grpo_kl=k2"], "grpo_kl must be one of ['k3', 'exact'], got 'k2'."),
    (["--model=ExpRSFT", "--reward_lambda=0"], "reward_lambda must be a number > 0, got 0."),
    (["--model=RSFT", "--standardize_rewards=True", "--weight_normalization=sum"],
     "weight_normalization: sum divides by the sum of the weights, and standardised weights"),
    (["--model=RSFT", "--reward_scope=trajectory", "--weight_normalization=sum"],
     "weight_normalization: sum divides by the sum of the weights, and standardised weights"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_method_settings_are_refused_before_any_data_is_read(tmp_path, args, message):
    """A post-training method's settings fail in one line at once, not after the BC stage: here the data
    folder does not even exist."""
    base = ["--model=HSTU", "--dataset=nowhere", f"--data_path={tmp_path / 'missing'}", f"--results_file={tmp_path / 'r.json'}"]
    status, lines = run_in_process(tmp_path, quick_start.main, *with_overrides(base, *args))
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("recbole-align: error: ") and message in lines[0], lines
