"""Compatibility fixes for RecBole 1.2.1 (see the README), applied without changing RecBole's files.

* numpy 2: :func:`numpy2_aliases` (applied when ``recbole_align`` is imported).
* Checkpoint loading on torch >= 2.6 (:func:`load_checkpoint`, :func:`full_checkpoint_loading`).
* RecBole's logger in runs started together: :func:`init_logger` creates the log folders first.
* Reproducible CUDA runs: RecBole's ``reproducibility`` sets cuDNN's flags only; :func:`deterministic_cuda`
  also makes PyTorch choose its deterministic kernels (scatter/index adds, cuBLAS).
* Multi-process training on any device: RecBole's ``Config`` always starts the process group with
  the nccl backend on one GPU per process, and its trainer wraps the model in
  ``DistributedDataParallel`` with ``device_ids``, which DDP refuses for a CPU model.
  :func:`join_process_group` takes the backend from the ``dist_backend`` config key and
  :func:`distributed_data_parallel_on_any_device` drops ``device_ids`` for a CPU model.
* Atomic files read by pandas' C parser (:func:`c_csv_parser`): RecBole reads them with
  ``engine="python"``, which loads 2.9-5.9x slower (BENCHMARKS 18).

torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, but RecBole's checkpoints
hold its ``Config`` object, so ``Trainer.evaluate(load_best_model=True)`` and
``Trainer.resume_checkpoint`` fail. Checkpoints written by this package's own runs are trusted
files; :func:`load_checkpoint` and :func:`full_checkpoint_loading` load them whole. The other
known breakages (pandas 3, setuptools >= 82 for ray) are avoided by pinned versions in
``pyproject.toml``, and ``recbole.quick_start`` (which imports ray) is never imported.
"""

import contextlib
import os
from unittest import mock

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from recbole.utils import init_logger as recbole_init_logger
from torch.nn.parallel import DistributedDataParallel

_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def numpy2_aliases():
    """Restore the numpy aliases that numpy 2 removed and RecBole 1.2.1 still reads (its
    ``Config.compatibility_settings`` assigns ``np.float = np.float_`` and the like, in every process
    that builds or unpickles a Config); a no-op on numpy 1."""
    for alias, dtype in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if alias not in vars(np):
            setattr(np, alias, dtype)


def deterministic_cuda(config):
    """With ``reproducibility: True`` on CUDA: PyTorch's deterministic algorithms (a kernel that has none
    warns rather than stops) and the cuBLAS workspace they need, so that the same seed gives the same
    metrics there too. The CPU's kernels are deterministic already."""
    if config["reproducibility"] and config["device"].type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_checkpoint(path, map_location="cpu"):
    """Load a RecBole checkpoint (a dict holding a ``Config``) written by a trusted run."""
    return torch.load(path, map_location=map_location, weights_only=False)


@contextlib.contextmanager
def full_checkpoint_loading():
    """Let RecBole's own ``torch.load`` calls inside the block load whole checkpoints."""
    previous = os.environ.get(_NO_WEIGHTS_ONLY)
    os.environ[_NO_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[_NO_WEIGHTS_ONLY]
        else:
            os.environ[_NO_WEIGHTS_ONLY] = previous


def init_logger(config):
    """RecBole's ``init_logger``, safe for runs started together in one folder: RecBole 1.2.1 checks
    whether ``./log/<model>`` exists and then creates it, so the second of two runs can crash with
    ``FileExistsError``; the folders are created here first, with ``exist_ok``."""
    os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
    recbole_init_logger(config)


def join_process_group(config, local_rank):
    """Make ``config``, built for one process, the config of process ``local_rank`` of a
    multi-process run, as RecBole's ``Config`` does when its config dict holds ``local_rank``,
    except that the process group's backend is ``dist_backend`` (default nccl when the run uses
    CUDA, else gloo) and the process runs on the CPU unless the run uses CUDA (then on GPU
    ``local_rank``, as in RecBole). Starts the process group (rank ``offset + local_rank`` of
    ``world_size``, meeting at ``ip``:``port``)."""
    cuda = config["device"].type == "cuda"
    config["dist_backend"] = config["dist_backend"] or ("nccl" if cuda else "gloo")
    dist.init_process_group(
        backend=config["dist_backend"],
        rank=config["offset"] + local_rank,
        world_size=config["world_size"],
        init_method=f"tcp://{config['ip']}:{config['port']}",
    )
    if cuda:
        config["device"] = torch.device("cuda", local_rank)
        torch.cuda.set_device(local_rank)
    config["local_rank"], config["single_spec"] = local_rank, False
    if local_rank != 0:  # as RecBole: only the first process of a machine logs
        config["state"], config["show_progress"], config["verbose"] = "error", False, False


def distributed_data_parallel_on_any_device(module, device_ids=None, **kwargs):
    """``DistributedDataParallel(module, ...)``, without ``device_ids`` for a CPU module."""
    if next(module.parameters()).device.type == "cpu":
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def trainer_on_any_device():
    """Within the block, RecBole's trainers wrap CPU models in DDP too (see the module docstring)."""
    return mock.patch("recbole.trainer.trainer.DistributedDataParallel", distributed_data_parallel_on_any_device)


def c_csv_parser():
    """Within the block, RecBole's ``pd.read_csv(..., engine="python")`` of an atomic file uses pandas' C
    parser when the field separator is one character (the C parser's only limit; RecBole's default is a
    tab): the same frame, loaded several times faster. A longer separator keeps the python parser."""
    read_csv = pd.read_csv

    def read(*args, engine=None, delimiter=None, **kwargs):
        if engine == "python" and delimiter is not None and len(delimiter) == 1:
            engine = "c"
        return read_csv(*args, engine=engine, delimiter=delimiter, **kwargs)

    return mock.patch("recbole.data.dataset.dataset.pd.read_csv", read)
