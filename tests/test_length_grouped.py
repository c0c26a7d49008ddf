"""Length-grouped training batches: every sequence once per epoch, similar lengths together, seeded."""

import pytest
import torch

from conftest import run_cli, tiny
from recbole_align.data.length_grouped import LengthGroupedBatches


class Epochs:
    """Successive epochs of LengthGroupedBatches from one seeded generator, as the loader draws them."""

    def __init__(self, lengths, batch_size=4, group_size=3, seed=0, rank=0, world=1):
        self.batching = LengthGroupedBatches(torch.tensor(lengths), batch_size, group_size, rank, world)
        self.generator = torch.Generator().manual_seed(seed)

    def batch_indices(self):
        return self.batching.draw(self.generator)


LENGTHS = [int(x) for x in torch.randint(1, 60, (97,), generator=torch.Generator().manual_seed(3))]


def test_every_sequence_once_per_epoch_and_batches_change():
    grouped = Epochs(LENGTHS)
    first, second = grouped.batch_indices(), grouped.batch_indices()
    for epoch in (first, second):
        assert sorted(torch.cat(epoch).tolist()) == list(range(len(LENGTHS)))
    assert [b.tolist() for b in first] != [b.tolist() for b in second]


def test_batches_hold_about_the_position_budget_and_similar_lengths():
    grouped = Epochs(LENGTHS)
    lengths = grouped.batching.lengths
    batches = grouped.batch_indices()
    positions = torch.tensor([int(lengths[b].sum()) for b in batches])
    assert positions.max() < 2 * grouped.batching.position_budget and positions.min() > grouped.batching.position_budget / 2
    padded_random = len(LENGTHS) * lengths.max().item()  # random batches of this size nearly all reach the max
    padded_grouped = sum(len(b) * lengths[b].max().item() for b in batches)
    assert padded_grouped < 0.8 * padded_random


def test_the_seed_and_the_generator_state_fix_the_batches():
    a, b = Epochs(LENGTHS, seed=7), Epochs(LENGTHS, seed=7)
    assert [x.tolist() for x in a.batch_indices()] == [x.tolist() for x in b.batch_indices()]
    state = a.generator.get_state()  # what resume restores
    expected = [x.tolist() for x in a.batch_indices()]
    b.generator.set_state(state)
    assert [x.tolist() for x in b.batch_indices()] == expected


def test_ranks_share_each_batch():
    shares = [Epochs(LENGTHS, rank=r, world=2).batch_indices() for r in (0, 1)]
    whole = Epochs(LENGTHS).batch_indices()
    for batch, first, second in zip(whole, *shares):
        assert sorted(first.tolist() + second.tolist()) == sorted(batch.tolist())


@pytest.mark.slow
def test_cli_run_with_length_grouped_batches(tmp_path, ml100k_slice):
    process, results = run_cli(
        tmp_path, "--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        *tiny("--epochs=3", "--length_grouped_batches=True", "--length_group_size=2"),
    )
    assert process.returncode == 0, process.stderr
    losses = [entry["train_loss"] for entry in results["epoch_log"]]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learns from the grouped batches
