from recbole_align.data.dataset import AlignSequentialDataset
from recbole_align.data.length_grouped import LengthGroupedTrainDataLoader, length_grouped

__all__ = ["AlignSequentialDataset", "LengthGroupedTrainDataLoader", "length_grouped"]
