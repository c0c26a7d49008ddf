from recbole_align.evaluator.filtering import rating_filtered_loader
from recbole_align.evaluator.metrics import FullMRR, register_metrics

__all__ = ["FullMRR", "rating_filtered_loader", "register_metrics"]
