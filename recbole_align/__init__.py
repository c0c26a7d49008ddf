"""recbole-align: post-training generative recommenders on RecBole."""

from recbole_align.compat import numpy2_aliases

numpy2_aliases()  # before any RecBole Config is built, here and in spawned processes

from recbole_align.evaluator import register_metrics  # noqa: E402

register_metrics()

from recbole_align.errors import AlignError  # noqa: E402
from recbole_align.registry import MODELS, register_model  # noqa: E402

__all__ = ["AlignError", "MODELS", "register_model"]
__version__ = "0.1.0"
