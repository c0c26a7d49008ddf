"""Sparse item updates (recbole_align.trainer.item_updates): a step that reads only the item rows it touches
computes the loss and gradients of the dense step, its lazy Adam takes the dense first step, and ``auto``
chooses by the catalogue, the loss and the trainer."""

import pytest
import torch
from test_hstu import DAY, make_batch, make_model

from recbole_align.errors import AlignError
from recbole_align.model import hstu
from recbole_align.trainer.item_updates import TableAndDenseOptimizer, item_update_mode


def batch():
    return make_batch([[3, 7, 5], [11, 12], [4]], [[0.0, DAY, 2 * DAY], [5.0, 500.0], [9.0]], [9, 13, 2],
                      [3 * DAY, 1e5, 20.0], ratings=([[4.0, 5.0, 3.0] + [0.0] * 5, [2.0, 1.0] + [0.0] * 6, [5.0] + [0.0] * 7],
                                                      [3.0, 4.0, 1.0]))


def loss_and_table_grad(sparse, sharing):
    model = make_model("SSM", n_items=300, negative_sharing=sharing, reward_head=True, dropout_prob=0.0)
    if sparse:
        model.use_sparse_item_updates()
    torch.manual_seed(3)
    loss = model.calculate_loss(batch())
    loss.backward()
    grad = model.item_embedding.weight.grad
    return model, loss, (grad.to_dense() if grad.is_sparse else grad)


@pytest.mark.parametrize("sharing", hstu.NEGATIVE_SHARING)
def test_reading_only_the_touched_rows_gives_the_loss_and_gradient_of_the_whole_table(sharing):
    _, dense_loss, dense_grad = loss_and_table_grad(False, sharing)
    model, sparse_loss, sparse_grad = loss_and_table_grad(True, sharing)
    assert model.item_embedding.weight.grad.is_sparse
    assert torch.allclose(sparse_loss, dense_loss, atol=1e-6)
    assert torch.allclose(sparse_grad, dense_grad, atol=1e-7)
    touched = sparse_grad.abs().sum(1) > 0
    assert 0 < touched.sum() < 300  # a share of the rows: the histories, targets and negatives


def test_lazy_adam_takes_the_first_dense_adamw_step_and_keeps_its_state(tmp_path):
    steps = {}
    for sparse in (False, True):
        model, _, _ = loss_and_table_grad(sparse, "position")
        table = model.item_embedding.weight
        others = [p for p in model.parameters() if p is not table]
        if sparse:
            optimizer = TableAndDenseOptimizer(torch.optim.AdamW(others, lr=0.01, betas=(0.9, 0.98), weight_decay=0.0),
                                               table, 0.01, (0.9, 0.98))
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.98), weight_decay=0.0)
        optimizer.step()
        steps[sparse] = [p.detach().clone() for p in model.parameters()]
        if sparse:
            saved = optimizer.state_dict()
            torch.save(saved, tmp_path / "state.pth")
            again = TableAndDenseOptimizer(torch.optim.AdamW(others, lr=0.01), table, 0.01, (0.9, 0.98))
            again.load_state_dict(torch.load(tmp_path / "state.pth", weights_only=False))
            assert again.state_dict()["table"]["state"][0]["step"] == 1
            with pytest.raises(AlignError, match="item_updates dense"):
                again.load_state_dict(torch.optim.AdamW(others).state_dict())
    for dense, lazy in zip(steps[False], steps[True], strict=True):
        assert torch.allclose(dense, lazy, atol=1e-6)  # Adam's first step moves no untouched row either


class Settings(dict):
    def __init__(self, **overrides):
        super().__init__({"model": "BC", "item_updates": "auto", "loss_type": "SSM", "learner": "adamw", "weight_decay": 0.0,
                          "clip_grad_norm": None, "single_spec": True, "num_negatives": 128, **overrides})


@pytest.mark.parametrize("n_items, overrides, trainer_allows, expected", [
    (3_706, {}, True, ("dense", "auto: 3706 items <= 500000")),
    (700_001, {}, True, ("sparse", "auto: 700001 items > 500000")),
    (700_001, {"loss_type": "CE"}, True, ("dense", "auto: loss_type CE scores the whole catalogue")),
    (700_001, {"model": "PPO"}, False, ("dense", "auto: [PPO] trains on the whole catalogue (its own loss)")),
    (700_001, {"weight_decay": 0.1}, True, ("dense", "auto: weight_decay > 0 decays every row at each step")),
    (3_706, {"item_updates": "sparse"}, True, ("sparse", "item_updates")),
    (700_001, {"item_updates": "dense"}, True, ("dense", "item_updates")),
])
def test_auto_chooses_by_the_catalogue_the_loss_and_the_trainer(n_items, overrides, trainer_allows, expected):
    model = make_model("SSM")
    model.n_items = n_items
    assert item_update_mode(Settings(**overrides), model, trainer_allows) == expected


def test_sparse_updates_where_they_cannot_run_are_refused_in_one_line():
    with pytest.raises(AlignError, match=r"item_updates sparse cannot run here: weight_decay > 0 decays every row at "
                                         r"each step; clip_grad_norm takes the norm of every gradient\. Use"):
        item_update_mode(Settings(item_updates="sparse", weight_decay=0.1, clip_grad_norm={"max_norm": 5}),
                         make_model("SSM"), True)
    with pytest.raises(AlignError, match="item_updates must be one of auto, dense, sparse; got 'lazy'"):
        item_update_mode(Settings(item_updates="lazy"), make_model("SSM"), True)
