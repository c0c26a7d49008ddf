"""The one compatibility fix that RecBole 1.2.1 needs on today's torch (see the README).

torch >= 2.6 loads checkpoints with ``weights_only=True`` by default, but RecBole's checkpoints
hold its ``Config`` object, so ``Trainer.evaluate(load_best_model=True)`` and
``Trainer.resume_checkpoint`` fail. Checkpoints written by this package's own runs are trusted
files; :func:`load_checkpoint` and :func:`full_checkpoint_loading` load them whole. The other
known breakages (numpy 2, pandas 3, setuptools >= 82 for ray) are avoided by pinned versions in
``pyproject.toml``, and ``recbole.quick_start`` (which imports ray) is never imported.
"""

import contextlib
import os

import torch

_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


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
