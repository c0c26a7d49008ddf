"""--resume: a run interrupted after epoch 1 and resumed ends exactly as an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, tiny

from recbole_align import results_version
from recbole_align.compat import load_checkpoint
from recbole_align.errors import AlignError
from recbole_align.config import build_config, command_line_overrides
from recbole_align.pretrained import resume_changes
from recbole_align.stages import plan_run
from recbole_align.trainer.align_trainer import last_state_file
from recbole_align.quick_start import run_recbole_align
from recbole_align.trainer import AlignTrainerMixin

COMPARED = ("valid", "test", "valid_filtered", "test_filtered", "best_epoch", "epochs_run")


class Interrupted(Exception):
    pass


def run(model, data_path, folder, name, *overrides):
    """run_recbole_align in-process on the slice, tiny, with checkpoint and results under ``folder``."""
    args = tiny(
        f"--data_path={data_path}", f"--checkpoint_dir={folder}", f"--checkpoint_file={folder / name}.pth",
        f"--results_file={folder / name}.json", *overrides,
    )
    return run_recbole_align(model, "ml-100k-slice", config_dict=command_line_overrides(args))


def interrupted_then_resumed(monkeypatch, model, data_path, folder, *overrides):
    """The results of a run killed when its epoch 2 starts, then run again with --resume."""
    train_epoch = AlignTrainerMixin._train_epoch

    def dies_in_epoch_2(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == 2:
            raise Interrupted
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(AlignTrainerMixin, "_train_epoch", dies_in_epoch_2)
        with pytest.raises(Interrupted):
            run(model, data_path, folder, "cut", *overrides)
    first = load_checkpoint(folder / "cut.last.pth")["resume"]
    results = run(model, data_path, folder, "cut", *overrides, f"--resume={folder / 'cut.last.pth'}")
    assert results["epoch_log"][:2] == first["epoch_log"]  # epochs 0-1 come from the file, not retrained
    assert results["train_seconds"] > first["fit_seconds"] > 0  # the first process's training counts too
    return results


def assert_same_run(resumed, uninterrupted):
    for key in COMPARED:
        assert resumed[key] == uninterrupted[key], key
    for a, b in zip(resumed["epoch_log"], uninterrupted["epoch_log"], strict=True):
        assert {k: v for k, v in a.items() if k != "train_seconds"} == {
            k: v for k, v in b.items() if k != "train_seconds"
        }


@pytest.fixture(scope="module")
def bc_run(ml100k_slice, tmp_path_factory):
    """An uninterrupted 3-epoch tiny HSTU run (also the BC checkpoint of the post-training test)."""
    folder = tmp_path_factory.mktemp("bc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads --key=value from sys.argv
        return folder, run("HSTU", ml100k_slice, folder, "full", "--epochs=3")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


def test_bc_run_resumed_ends_as_uninterrupted(monkeypatch, ml100k_slice, tmp_path, bc_run):
    resumed = interrupted_then_resumed(monkeypatch, "HSTU", ml100k_slice, tmp_path, "--epochs=3")
    assert_same_run(resumed, bc_run[1])
    assert resumed["checkpoint"] == str(tmp_path / "cut.pth")


def test_length_grouped_run_resumed_ends_as_uninterrupted(monkeypatch, ml100k_slice, tmp_path):
    # the length-grouped batches come from the loader's generator, whose state the resume file carries
    grouped = ("--epochs=3", "--length_grouped_batches=True", "--length_group_size=2", "--train_batch_size=16")
    uninterrupted = run("HSTU", ml100k_slice, tmp_path, "full", *grouped)
    resumed = interrupted_then_resumed(monkeypatch, "HSTU", ml100k_slice, tmp_path, *grouped)
    assert_same_run(resumed, uninterrupted)


def test_a_run_with_sparse_item_updates_resumed_ends_as_uninterrupted(monkeypatch, ml100k_slice, tmp_path, caplog):
    # the lazy Adam state of the item table travels in the resume file beside the dense optimizer's
    sparse = ("--epochs=3", "--item_updates=sparse")
    with caplog.at_level("INFO"):
        uninterrupted = run("HSTU", ml100k_slice, tmp_path, "full", *sparse)
    assert "item table updates: sparse (item_updates)" in caplog.text
    resumed = interrupted_then_resumed(monkeypatch, "HSTU", ml100k_slice, tmp_path, *sparse)
    assert_same_run(resumed, uninterrupted)
    dense = run("HSTU", ml100k_slice, tmp_path, "dense", "--epochs=3", "--item_updates=dense")
    assert dense["epoch_log"][0]["train_loss"] == pytest.approx(uninterrupted["epoch_log"][0]["train_loss"], rel=0.02)


def test_drpo_run_resumed_ends_as_uninterrupted(monkeypatch, ml100k_slice, tmp_path, bc_run):
    # DRPO: its adaptive kept fraction P is trainer state that the resume file must carry
    bc = f"--pretrained_checkpoint={bc_run[1]['checkpoint']}"
    uninterrupted = run("DRPO", ml100k_slice, tmp_path, "full", "--epochs=3", bc)
    resumed = interrupted_then_resumed(monkeypatch, "DRPO", ml100k_slice, tmp_path, "--epochs=3", bc)
    assert_same_run(resumed, uninterrupted)
    assert resumed["epoch_log"][2]["drpo_keep_fraction"] != resumed["epoch_log"][0]["drpo_keep_fraction"]


def test_resuming_an_ended_run_only_evaluates(ml100k_slice, tmp_path, bc_run):
    folder, full = bc_run
    again = run("HSTU", ml100k_slice, folder, "full", "--epochs=3", f"--resume={folder / 'full.last.pth'}")
    assert_same_run(again, full)
    assert again["epoch_log"] == full["epoch_log"]  # nothing retrained


@pytest.mark.parametrize(
    "model, resume, overrides, message",
    [
        ("HSTU", "missing.last.pth", [], "resume [{folder}/missing.last.pth] does not exist"),
        ("HSTU", "full.pth", [], "holds no training state: give the <checkpoint>.last.pth"),
        ("DRPO", "full.last.pth", [], "is a run of [HSTU] on [ml-100k-slice], not of [DRPO]"),
        ("HSTU", "full.last.pth", ["--checkpoint_file=other.pth"], "continues a run with checkpoint_file"),
    ],
)
def test_resume_errors(ml100k_slice, bc_run, model, resume, overrides, message):
    folder = bc_run[0]
    args = tiny(f"--data_path={ml100k_slice}", f"--resume={folder / resume}", *overrides)
    with pytest.raises(AlignError) as error:
        run_recbole_align(model, "ml-100k-slice", config_dict=command_line_overrides(args))
    assert message.format(folder=folder) in str(error.value)


def test_a_resume_on_changed_data_is_refused_and_a_bc_stage_starts_afresh(ml100k_slice, tmp_path):
    """The last state records the run's identity: after the code changes or the .inter file is edited, --resume is
    refused in one line, and the plan of a BC stage interrupted on the old data (or whose state is cut
    short) trains it afresh."""
    data_path = tmp_path / "data"
    shutil.copytree(ml100k_slice, data_path)
    run("HSTU", data_path, tmp_path, "cut", "--epochs=1")
    last = tmp_path / "cut.last.pth"
    config = build_config("HSTU", "ml-100k-slice", config_dict=command_line_overrides(
        tiny(f"--data_path={data_path}", "--epochs=1", f"--checkpoint_file={tmp_path / 'cut.pth'}")))[0]
    assert resume_changes(load_checkpoint(last), config) == []
    with pytest.MonkeyPatch.context() as patch:  # code changed, not yet declared: another run
        patch.setattr(results_version, "SOURCE_DIGEST", "declared-for-other-code")
        with pytest.raises(AlignError, match=rf"is another run \(code v{results_version.RESULTS_VERSION} -> "):
            run("HSTU", data_path, tmp_path, "cut", "--epochs=1", f"--resume={last}")
    longer = run("HSTU", data_path, tmp_path, "cut", "--epochs=2", f"--resume={last}")  # a larger budget trains on
    assert longer["epochs_run"] == 2 and longer["identity"]["settings"]["epochs"] == 2
    inter = data_path / "ml-100k-slice" / "ml-100k-slice.inter"
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-40]) + "\n")  # the user removes some ratings
    with pytest.raises(AlignError) as error:
        run("HSTU", data_path, tmp_path, "cut", "--epochs=2", f"--resume={last}")
    assert f"resume [{last}] is another run (ml-100k-slice.inter " in str(error.value)
    assert "run without --resume" in str(error.value)

    # a BC stage's partial state, as an interrupted post-training command leaves it, then the data edited again
    args = command_line_overrides(tiny(f"--data_path={data_path}", f"--checkpoint_dir={tmp_path}", "--epochs=1"))
    planned = plan_run("ExpRSFT", "ml-100k-slice", config_dict=args).stages[0]
    shutil.copy(last, last_state_file(planned.config["checkpoint_file"]))
    inter.write_text("\n".join(lines[:-80]) + "\n")
    bc_stage = plan_run("ExpRSFT", "ml-100k-slice", config_dict=args).stages[0]
    assert bc_stage.config["resume"] is None
    assert any(note.startswith("BC stage: not resuming") and "ml-100k-slice.inter" in note for note in bc_stage.notes)

    # a state cut short (the machine stopped while it was saved) is not resumed either: trained afresh
    partial_state = last_state_file(planned.config["checkpoint_file"])
    with open(partial_state, "wb") as cut_short:
        cut_short.write(last.read_bytes()[:1000])
    bc_stage = plan_run("ExpRSFT", "ml-100k-slice", config_dict=args).stages[0]
    assert bc_stage.config["resume"] is None
    assert any(note.startswith("BC stage: not resuming") and "cannot be read" in note for note in bc_stage.notes)


@pytest.mark.slow
def test_ctrl_c_stops_after_a_batch_and_says_how_to_resume(ml100k_slice, tmp_path):
    """SIGINT while training: the run ends after its current batch with exit status 130 and one line naming the
    saved last state and the command that continues from it (no traceback)."""
    checkpoint = tmp_path / "run.pth"
    command = [sys.executable, str(REPO / "run_recbole_align.py"), "--model=HSTU", "--dataset=ml-100k-slice",
               f"--data_path={ml100k_slice}", *tiny("--epochs=500"), f"--checkpoint_file={checkpoint}",
               f"--results_file={tmp_path / 'r.json'}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "run.last.pth"
    deadline = time.time() + 300
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.startswith("recbole-align:")]
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("recbole-align: interrupted: stopped in epoch ") and f"--resume={last}" in lines[0]
    assert last.is_file() and not (tmp_path / "r.json").exists()  # nothing written as if it had finished
