from recbole_align.data.dataset import AlignSequentialDataset

__all__ = ['AlignSequentialDataset']
