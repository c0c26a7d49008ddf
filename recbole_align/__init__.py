"""recbole-align: post-training generative recommenders on RecBole."""

from recbole_align.evaluator import register_metrics

register_metrics()

from recbole_align.errors import AlignError  # noqa: E402
from recbole_align.registry import MODELS, register_model  # noqa: E402

__all__ = ["AlignError", "MODELS", "register_model"]
__version__ = "0.1.0"
