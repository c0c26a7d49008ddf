"""Length-grouped training batches: users of similar history length in the same batch.

A batch costs what its longest history costs once it is trimmed (see ``NextItemPolicy.trimmed``),
so random batches of 128 users each pay for a 200-item window on ml-1m-half. Here each epoch
shuffles the training sequences, cuts the permutation into groups of ``length_group_size`` batches,
sorts each group by history length, cuts it into batches, and shuffles the order of all the
batches: the batches change every epoch and stay close to length-homogeneous. Every draw comes
from the loader's own seeded generator, so the seed fixes the batches, and resuming restores them.
"""

import math

import torch
from recbole.data.dataloader import TrainDataLoader

from recbole_align.errors import AlignError


class LengthGroupedTrainDataLoader(TrainDataLoader):
    """RecBole's TrainDataLoader with length-grouped batches (config keys ``length_grouped_batches``,
    ``length_group_size``). In a multi-process run every rank draws the same batches and takes every
    ``world_size``-th sequence of each."""

    def __init__(self, config, dataset, sampler, shuffle=True):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self.group_size = config["length_group_size"]
        if not isinstance(self.group_size, int) or isinstance(self.group_size, bool) or self.group_size < 1:
            raise AlignError(f"length_group_size must be an integer >= 1, got {self.group_size!r}.")
        self.lengths = dataset.inter_feat[dataset.item_list_length_field]
        self.global_batch_size = config["train_batch_size"]
        self.rank, self.world = (0, 1) if config["single_spec"] else (config["local_rank"] + config["offset"], config["world_size"])

    def batch_indices(self):
        """This epoch's batches (tensors of sequence indices), drawn from the loader's generator."""
        batch_size = self.global_batch_size
        order = torch.randperm(self.sample_size, generator=self.generator)
        batches = []
        for group in order.split(batch_size * self.group_size):
            by_length = group[torch.sort(self.lengths[group], descending=True, stable=True).indices]
            batches.extend(by_length.split(batch_size))
        return [batches[i][self.rank :: self.world] for i in torch.randperm(len(batches), generator=self.generator)]

    def __len__(self):
        return math.ceil(self.sample_size / self.global_batch_size)

    def __iter__(self):
        for indices in self.batch_indices():
            yield self.collate_fn(indices.tolist())


def length_grouped(config, train_data):
    """``train_data`` itself, or with ``length_grouped_batches`` the same data in length-grouped batches."""
    if not config["length_grouped_batches"]:
        return train_data
    return LengthGroupedTrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True)
