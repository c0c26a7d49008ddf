from recbole_align.data.dataset import AlignDataset, AlignSequentialDataset
from recbole_align.data.fingerprint import stale_inputs
from recbole_align.data.length_grouped import LengthGroupedTrainDataLoader, length_grouped
from recbole_align.data.loading import EVAL_SPLITS, check_splits, load_dataset, split_loaders

__all__ = ["EVAL_SPLITS", "AlignDataset", "AlignSequentialDataset", "LengthGroupedTrainDataLoader", "check_splits", "length_grouped",
           "load_dataset", "split_loaders", "stale_inputs"]
