"""Output files written whole or not at all (recbole_align.safe_write), and the harness's folder lock."""

import builtins
import errno
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_and_evaluation import config_for, generated_frame

from conftest import run_in_process, tiny, write_atomic
from recbole_align import benchmark, quick_start
from recbole_align.data import load_dataset, split_loaders
from recbole_align.errors import AlignError
from recbole_align.registry import MODELS
from recbole_align.safe_write import write_json
from recbole_align.trainer.align_trainer import last_state_file

FULL = "No space left on device"


class FullDiskFile:
    """An open file on a full disk: a write puts a few bytes down, then fails with ENOSPC."""

    def __init__(self, file):
        self.file = file

    def write(self, data):
        self.file.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk(target)``: from now on, a file opened for writing beside ``target`` whose name has ``target``'s
    in it (``target`` itself or a temporary file for it) is on a full disk."""

    def fill(target):
        real_open = builtins.open
        target = Path(target)

        def open_on_full_disk(file, mode="r", *args, **kwargs):
            opened = real_open(file, mode, *args, **kwargs)
            path = Path(file) if isinstance(file, (str, os.PathLike)) else None
            if set(mode) & set("wax") and path and path.parent == target.parent and target.name in path.name:
                return FullDiskFile(opened)
            return opened

        monkeypatch.setattr(builtins, "open", open_on_full_disk)

    return fill


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """A tiny HSTU trainer (nothing trained) on generated data."""
    data_path = write_atomic(tmp_path_factory.mktemp("data"), "gen", generated_frame(n_users=12))
    config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    return MODELS["HSTU"].trainer_class(config, spec.model_class(config, test._dataset))


def save_checkpoint(trainer, path):
    trainer.saved_model_file = str(path)
    trainer._save_checkpoint(0)


def save_last_state(trainer, path):
    trainer.saved_model_file = str(path).replace(".last.pth", ".pth")
    rng = {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": None}
    trainer._save_last_state(0, rng)


WRITES = {
    "results JSON": ("r.json", lambda trainer, path: write_json(path, {"ndcg@10": 0.5})),
    "checkpoint": ("m.pth", save_checkpoint),
    "last state": (last_state_file("m.pth"), save_last_state),
}


@pytest.mark.parametrize("previous", [None, b"a complete earlier file"])
@pytest.mark.parametrize("what", list(WRITES))
def test_a_failed_write_leaves_no_partial_file(tmp_path, full_disk, trainer, what, previous):
    name, write = WRITES[what]
    target = tmp_path / name
    write(trainer, target)  # on a disk with space: the file and nothing else
    assert os.listdir(tmp_path) == [name]
    if previous is None:
        target.unlink()
    else:
        target.write_bytes(previous)
    full_disk(target)
    with pytest.raises(AlignError) as error:
        write(trainer, target)
    assert str(error.value) == f"cannot write [{target}]: {FULL}"
    assert os.listdir(tmp_path) == ([name] if previous is not None else [])  # no temporary file left
    if previous is not None:
        assert target.read_bytes() == previous


@pytest.mark.parametrize("name", ["saved/m.pth", "saved/m.last.pth", "r.cases.npz", "r.json"])
def test_a_run_whose_output_cannot_be_written_ends_in_one_line(tmp_path, full_disk, name):
    """Before: a checkpoint failed in torch's own writer with two tracebacks and left a partial m.pth."""
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=12))
    target = tmp_path / name
    full_disk(target)
    args = tiny("--model=HSTU", "--dataset=gen", f"--data_path={data_path}", "--MAX_ITEM_LIST_LENGTH=5", "--topk=[5,10]",
                f"--checkpoint_dir={tmp_path / 'saved'}", f"--checkpoint_file={tmp_path / 'saved/m.pth'}",
                f"--results_file={tmp_path / 'r.json'}")
    status, lines = run_in_process(tmp_path, quick_start.main, *args)
    assert status == 2
    assert lines == [f"recbole-align: error: cannot write [{target}]: {FULL}"]
    assert [file for file in os.listdir(target.parent) if target.name in file] == []  # nor a temporary file
    assert not (tmp_path / "r.json").exists()


class PastTheLock(Exception):
    pass


def test_a_second_benchmark_on_the_same_folder_is_refused(tmp_path, monkeypatch):
    def runs(*args, **kwargs):
        raise PastTheLock

    monkeypatch.setattr(benchmark, "execute_all", runs)
    args = [f"--output_dir={tmp_path}", "--methods=[BC]", "--baselines=[]"]
    with benchmark.folder_lock(tmp_path):  # as another invocation holds it (a new open file: flock refuses it)
        status, lines = run_in_process(tmp_path, benchmark.main, *args)
    assert status == 2
    assert lines == [f"recbole-align: error: --output_dir [{tmp_path}] is in use by another benchmark "
                     f"(pid {os.getpid()}): wait for it to end, or give another --output_dir."]
    with pytest.raises(PastTheLock):  # released: the next invocation runs
        run_in_process(tmp_path, benchmark.main, *args)
