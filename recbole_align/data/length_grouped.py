"""Length-grouped training batches: users of similar history length in the same batch.

A batch costs what its longest history costs once it is trimmed (see ``NextItemPolicy.trimmed``),
so random batches of 128 users each pay for a 200-item window on ml-1m-half. Here each epoch
shuffles the training sequences, cuts the permutation into groups of ``length_group_size`` batches'
worth of sequences, sorts each group by history length, cuts it into batches, and shuffles the
order of all the batches: the batches change every epoch and stay close to length-homogeneous.

Batches hold a fixed number of positions rather than of sequences: about ``train_batch_size`` times
the mean history length, so many short histories or few long ones. The all-position losses are
means over a batch's positions; with a fixed number of sequences, a batch of short histories would
weigh each of its positions several times more than a batch of long ones, which measurably slows
BC on ml-1m-half (BENCHMARKS.md). With a position budget every position weighs about what it weighs
in random batches. Every draw comes from the loader's own seeded generator, so the seed fixes the
batches, and resuming restores them.
"""

import math

import torch
from recbole.data.dataloader import TrainDataLoader

from recbole_align.checks import is_integer
from recbole_align.errors import AlignError


class LengthGroupedBatches:
    """The batching rule: ``lengths`` [N] history lengths, batches of about ``batch_size`` x their mean
    positions, sorted within groups of ``group_size`` batches; in a multi-process run (``rank`` of
    ``world``) every rank draws the same batches and takes every ``world``-th sequence of each."""

    def __init__(self, lengths, batch_size, group_size, rank=0, world=1):
        if not is_integer(group_size) or group_size < 1:
            raise AlignError(f"length_group_size must be an integer >= 1, got {group_size!r}.")
        self.lengths, self.batch_size, self.group_size, self.rank, self.world = lengths, batch_size, group_size, rank, world
        self.position_budget = batch_size * lengths.double().mean().item()

    def draw(self, generator):
        """One epoch's batches (tensors of sequence indices), drawn from ``generator``."""
        order = torch.randperm(len(self.lengths), generator=generator)
        group_size = self.batch_size * self.group_size
        groups = list(order.split(group_size))
        if len(groups) > 1 and len(groups[-1]) < group_size / 2:
            groups[-2:] = [torch.cat(groups[-2:])]  # the epoch's remainder joins the last full group
        batches = []
        for group in groups:
            by_length = group[torch.sort(self.lengths[group], descending=True, stable=True).indices]
            batch_of = (self.lengths[by_length].cumsum(0) - 1).div(self.position_budget, rounding_mode="floor")
            sizes = torch.unique_consecutive(batch_of, return_counts=True)[1].tolist()
            if len(sizes) > 1 and self.lengths[by_length[-sizes[-1]:]].sum() < self.position_budget / 2:
                remainder = sizes.pop()
                sizes[-1] += remainder  # the group's remainder joins its last full batch
            batches.extend(by_length.split(sizes))
        return [batches[i][self.rank :: self.world] for i in torch.randperm(len(batches), generator=generator)]

    def __len__(self):
        """About the number of batches of an epoch (each epoch's own count differs by a few)."""
        return math.ceil(self.lengths.sum().item() / self.position_budget)


class LengthGroupedTrainDataLoader(TrainDataLoader):
    """RecBole's TrainDataLoader with :class:`LengthGroupedBatches` (config keys ``length_grouped_batches``,
    ``length_group_size``), drawn from the loader's own seeded generator."""

    def __init__(self, config, dataset, sampler, shuffle=True):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        rank, world = (0, 1) if config["single_spec"] else (config["local_rank"] + config["offset"], config["world_size"])
        self.batching = LengthGroupedBatches(dataset.inter_feat[dataset.item_list_length_field],
                                             config["train_batch_size"], config["length_group_size"], rank, world)

    def batch_indices(self):
        """This epoch's batches (tensors of sequence indices), drawn from the loader's generator."""
        return self.batching.draw(self.generator)

    def __len__(self):
        return len(self.batching)

    def __iter__(self):
        for indices in self.batch_indices():
            yield self.collate_fn(indices.tolist())


def length_grouped(config, train_data):
    """``train_data`` itself, or with ``length_grouped_batches`` the same data in length-grouped batches."""
    if not config["length_grouped_batches"]:
        return train_data
    return LengthGroupedTrainDataLoader(config, train_data._dataset, train_data._sampler, shuffle=True)
