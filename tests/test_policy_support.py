"""The on-policy trainers over a support of candidate items (``policy_estimator: sampled``): the normaliser
estimate is unbiased, every estimate tends to the exact catalogue value as the sample covers the catalogue,
and PPO, GRPO and DPO train over a support, with dense or sparse item updates."""

import math
import random
import sys

import pytest
import torch
from test_hstu import make_model
from test_rlhf import planted_batch

from recbole_align.config import build_config
from recbole_align.errors import AlignError
from recbole_align.trainer import on_policy
from recbole_align.trainer.dpo import DPOTrainer
from recbole_align.trainer.grpo import GRPOTrainer
from recbole_align.trainer.on_policy import Support, history_items, policy_estimator
from recbole_align.trainer.ppo import PPOTrainer


def test_a_support_holds_the_targets_exactly_and_a_weighted_uniform_tail():
    torch.manual_seed(0)
    support = Support(torch.tensor([3, 3, 5]), n_items=12, tail_samples=4)
    assert support.items[0] == 0 and support.items[1:3].tolist() == [3, 5] and len(set(support.items.tolist())) == len(support.items)
    tail = support.items[3:]
    assert len(tail) >= 1 and not set(tail.tolist()) & {0, 3, 5}
    assert support.log_weight[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.allclose(support.log_weight[3:], torch.tensor(-math.log(1 - (10 / 11) ** 4)))
    assert torch.equal(support.items[support.slots(support.items)], support.items)
    assert support.slots(torch.tensor([[3, 0], [5, 3]])).tolist() == [[1, 0], [2, 1]]


def contexts(n_items=30, seed=0):
    model, reference = make_model(n_items=n_items).eval().double(), make_model(n_items=n_items, seed=1).eval().double()
    torch.manual_seed(seed)
    item_seq = torch.tensor([[3, 5, 3, 9, 0, 0], [4, 6, 7, 8, 1, 2]])
    history = history_items(item_seq, torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 3, 0, 2, 5]))
    states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1).requires_grad_()
    reference_states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    return model, reference, history, states, reference_states


def test_the_normaliser_estimate_is_unbiased():
    model, _, history, states, _ = contexts()
    exact = on_policy.log_normaliser(model, states, history, 0.7).exp()
    torch.manual_seed(1)
    estimates = torch.stack([
        on_policy.log_normaliser(model, states, history, 0.7, Support(torch.tensor([3, 11, 12]), 30, 5)).exp()
        for _ in range(4000)
    ])
    assert torch.allclose(estimates.mean(0), exact, rtol=0.03)
    assert estimates.std(0).min() > 0  # a real estimate: the tail differs from draw to draw


def test_every_estimate_tends_to_the_exact_value_as_the_sample_covers_the_catalogue():
    model, reference, history, states, reference_states = contexts()
    actions = torch.tensor([[10, 11], [1, 2], [3, 5], [9, 10], [11, 3]])
    upstream = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)

    def values_and_gradient(support):
        slots = actions if support is None else support.slots(actions)
        log_pi, kl = on_policy.log_probs_and_kl(model, states, reference, reference_states, history, slots, 0.7,
                                                support=support)
        (gradient,) = torch.autograd.grad((log_pi * upstream[0]).sum() + (kl * upstream[1]).sum(), states)
        return log_pi, kl, gradient

    covering = Support(torch.tensor([10, 11]), 30, 20_000)  # every item drawn: inclusion 1 - (28/29)^20000
    assert len(covering.items) == 30
    for estimate, exact in zip(values_and_gradient(covering), values_and_gradient(None), strict=True):
        assert torch.allclose(estimate, exact, atol=1e-9)
    exact_kl = on_policy.policy_kl(model, reference, states, reference_states, history)
    assert torch.allclose(on_policy.policy_kl(model, reference, states, reference_states, history, covering), exact_kl)
    exact_log_probs = on_policy.log_probs_at(model, states, history, actions, 0.7)
    assert torch.allclose(on_policy.log_probs_at(model, states, history, covering.slots(actions), 0.7, covering),
                          exact_log_probs)


def test_samples_over_a_support_are_its_slots_and_never_the_history():
    model, _, history, states, _ = contexts()
    support = Support(torch.tensor([3, 4, 10, 11]), 30, 8)
    slots, log_probs = on_policy.sample_with_log_probs(model, states.detach(), history, 50, 1.0, support)
    items = support.items[slots]
    assert (items > 0).all()
    assert not any(set(drawn) & set(seen) for drawn, seen in zip(items.tolist(), history.tolist()))
    assert torch.allclose(log_probs, on_policy.log_probs_at(model, states.detach(), history, slots, 1.0, support))
    pairs = support.items[on_policy.sample_pairs(model, states.detach(), history, 1.0, support)]
    assert (pairs[:, 0] != pairs[:, 1]).all()


@pytest.mark.parametrize("n_items, asked, expected", [
    (3_706, None, ("exact", "auto: 3706 items <= 100000")), (700_001, "auto", ("sampled", "auto: 700001 items > 100000")),
    (3_706, "sampled", ("sampled", "policy_estimator")),
])
def test_auto_takes_the_catalogue_up_to_100k_items(n_items, asked, expected):
    assert policy_estimator({"policy_estimator": asked}, n_items) == expected
    with pytest.raises(AlignError, match="policy_estimator must be one of auto, exact, sampled; got 'topk'"):
        policy_estimator({"policy_estimator": "topk"}, n_items)


@pytest.mark.parametrize("trainer_class, model_name, item_updates", [
    (PPOTrainer, "PPO", "dense"), (PPOTrainer, "PPO", "sparse"), (GRPOTrainer, "GRPO", "sparse"), (DPOTrainer, "DPO", "sparse"),
])
def test_ppo_grpo_and_dpo_train_over_a_support(trainer_class, model_name, item_updates, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv
    torch.set_num_threads(1)
    model = make_model("SSM", n_items=41, reward_head=True, dropout_prob=0.0)
    for parameter in model.reward_head.parameters():
        torch.nn.init.normal_(parameter)
    config, _ = build_config(model_name, "ml-100k", config_dict={
        "policy_estimator": "sampled", "policy_tail_samples": 8, "item_updates": item_updates, "num_samples": 4,
        "checkpoint_dir": str(tmp_path), "state": "ERROR", "use_gpu": False,
    })
    trainer = trainer_class(config, model)
    assert trainer.estimator == "sampled" and model.touched_rows == (item_updates == "sparse")
    batch = planted_batch(random.Random(3), n_users=8)
    before = model.item_embedding.weight.detach().clone()
    for _ in range(2):
        trainer.optimizer.zero_grad()
        loss = trainer.batch_loss(batch)
        loss.backward()
        trainer.optimizer.step()
        assert torch.isfinite(loss)
    assert model.item_embedding.weight.grad is None or model.item_embedding.weight.grad.is_sparse == (item_updates == "sparse")
    assert not torch.equal(before, model.item_embedding.weight)
    assert all(math.isfinite(float(value)) for stats in trainer.batch_stats for value in stats.values())
