"""Reward head, PPO, GRPO, online DPO and the reward-model diagnostics: hand-computed losses, sampling,
a planted rating rule, and end-to-end CLI runs on a slice of ml-100k."""

import math
import random
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, markdown_lines, run_cli, run_tool, tiny
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hstu import DAY, MAX_LEN, make_batch, make_model

from recbole_align.compat import load_checkpoint
from recbole_align.config import build_config
from recbole_align.diagnostics import run_diagnostics
from recbole_align.trainer.dpo import dpo_loss, rank_pairs
from recbole_align.trainer.grpo import group_advantages, grpo_loss
from recbole_align.trainer.on_policy import exact_kl, history_items, log_policy, sample_distinct_pairs, sample_items
from recbole_align.trainer.ppo import PPOTrainer, RepeatedBatches, ppo_loss

LOG = torch.log
TWO_EPOCHS = tiny("--epochs=2")


def test_ppo_loss_against_hand_computed_values():
    # one context over items 0..3 (0 = padding, excluded); K = 2 sampled items 1 and 2
    log_pi = LOG(torch.tensor([[0.0, 0.5, 0.3, 0.2]])).requires_grad_()
    log_ref = LOG(torch.tensor([[0.0, 0.25, 0.25, 0.5]]))
    actions, rewards = torch.tensor([[1, 2]]), torch.tensor([[4.0, 2.0]])  # advantages +1, -1
    log_old = LOG(torch.tensor([[0.4, 0.3]]))  # ratios 1.25 (clipped to 1.2) and 1.0
    loss, stats = ppo_loss(
        log_pi.gather(1, actions), log_old, exact_kl(log_pi, log_ref), rewards, clip_epsilon=0.2, kl_coef=0.1
    )
    kl = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)
    assert stats["clip_objective"].item() == pytest.approx((1.2 * 1 + 1.0 * -1) / 2)
    assert stats["kl_to_bc"].item() == pytest.approx(kl) and kl == pytest.approx(0.218012, abs=1e-6)
    assert stats["clip_fraction"].item() == 0.5
    assert loss.item() == pytest.approx(-0.1 + 0.1 * kl)
    # without the KL term, the clipped sample (ratio above 1 + eps, positive advantage) gets no gradient;
    # the other gets -(1/MK) * ratio * A = 0.5
    no_kl = ppo_loss(log_pi.gather(1, actions), log_old, exact_kl(log_pi, log_ref), rewards, 0.2, 0.0)[0]
    (grad,) = torch.autograd.grad(no_kl, log_pi)
    assert grad[0].tolist() == pytest.approx([0.0, 0.0, 0.5, 0.0])


def test_grpo_loss_against_hand_computed_values():
    # one context over items 0..4 (0 = padding, excluded); a group of G = 3 sampled items 1, 2, 3
    log_pi = LOG(torch.tensor([[0.0, 0.4, 0.3, 0.2, 0.1]])).requires_grad_()
    log_ref = LOG(torch.tensor([[0.0, 0.25, 0.25, 0.25, 0.25]]))
    actions, rewards = torch.tensor([[1, 2, 3]]), torch.tensor([[4.0, 2.0, 3.0]])
    log_old = LOG(torch.tensor([[0.32, 0.3, 0.25]]))  # ratios 1.25 (clipped to 1.2), 1.0 and 0.8 (clipped)
    eps = 1e-6
    std = math.sqrt(((4 - 3) ** 2 + (2 - 3) ** 2 + 0) / 3)  # population std of the group
    advantages = [(4 - 3) / (std + eps), (2 - 3) / (std + eps), 0.0]
    exact = exact_kl(log_pi, log_ref)
    k3 = [0.25 / p - math.log(0.25 / p) - 1 for p in (0.4, 0.3, 0.2)]  # pi_ref / pi_theta - log(...) - 1
    args = (log_pi.gather(1, actions), log_old, exact, rewards)
    loss, stats = grpo_loss(*args, clip_epsilon=0.2, kl_coef=0.1, advantage_eps=eps,
                            log_reference=log_ref.gather(1, actions))
    clip_objective = (1.2 * advantages[0] + 1.0 * advantages[1] + 0.8 * advantages[2]) / 3
    assert stats["clip_objective"].item() == pytest.approx(clip_objective) and clip_objective == pytest.approx(0.08165, abs=1e-5)
    assert stats["clip_fraction"].item() == pytest.approx(2 / 3)
    assert stats["kl_k3"].item() == pytest.approx(sum(k3) / 3, abs=1e-6) and sum(k3) / 3 == pytest.approx(0.045838, abs=1e-6)
    assert loss.item() == pytest.approx(-clip_objective + 0.1 * sum(k3) / 3)
    # grpo_kl: exact penalises the exact catalogue KL, PPO's input; kl_to_bc is that KL either way
    exact_loss, exact_stats = grpo_loss(*args, clip_epsilon=0.2, kl_coef=0.1, advantage_eps=eps)
    ppo_stats = ppo_loss(*args, clip_epsilon=0.2, kl_coef=0.1)[1]
    assert exact_stats["kl_to_bc"] == stats["kl_to_bc"] == ppo_stats["kl_to_bc"] and "kl_k3" not in exact_stats
    assert exact_loss.item() == pytest.approx(-clip_objective + 0.1 * exact.item())
    # equal rewards: advantages 0, so only the k3 penalty has a gradient, kl_coef/G (1 - pi_ref/pi_theta) per item
    no_advantage = grpo_loss(log_pi.gather(1, actions), log_old, exact, torch.full((1, 3), 3.0), 0.2, 0.1, eps,
                             log_ref.gather(1, actions))[0]
    (grad,) = torch.autograd.grad(no_advantage, log_pi)
    assert grad[0].tolist() == pytest.approx([0.0] + [0.1 / 3 * (1 - 0.25 / p) for p in (0.4, 0.3, 0.2)] + [0.0])


@settings(max_examples=50, deadline=None)
@given(
    rewards=st.lists(st.floats(1.0, 5.0), min_size=2, max_size=8).map(lambda group: torch.tensor([group], dtype=torch.float64)),
    shift=st.floats(-10.0, 10.0), scale=st.floats(0.1, 10.0),
)
def test_grpo_advantages_are_invariant_to_shifting_and_scaling_rewards(rewards, shift, scale):
    advantages = group_advantages(rewards, eps=1e-6)
    assert torch.allclose(group_advantages(rewards + shift, eps=1e-6), advantages, atol=1e-6)
    assert torch.allclose(group_advantages(scale * rewards, eps=scale * 1e-6), advantages, atol=1e-6)  # eps in reward units
    assert abs(advantages.sum().item()) < 1e-6 and torch.isfinite(advantages).all()  # 0 for equal rewards


def ppo_trainer_on(model, ppo_epochs, checkpoint_dir):
    """A PPOTrainer around ``model`` (π_BC: its frozen copy), built from PPO's config (no data is loaded)."""
    config, _ = build_config("PPO", "ml-100k", config_dict={
        "ppo_epochs": ppo_epochs, "num_samples": 4, "clip_epsilon": 0.2, "kl_coef": 0.0, "sampling_temperature": 1.0,
        "checkpoint_dir": str(checkpoint_dir), "state": "ERROR", "use_gpu": False,
    })
    return PPOTrainer(config, model)


def test_standard_ppo_samples_one_rollout_per_batch_and_passes_over_it(one_thread, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = make_model("CE", n_items=41, reward_head=True, dropout_prob=0.0)
    for parameter in model.reward_head.parameters():  # a reward model that is not constant (its last layer starts at 0)
        torch.nn.init.normal_(parameter)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv (here pytest's options)
    trainer = ppo_trainer_on(model, 2, tmp_path)
    batch = planted_batch(random.Random(3), n_users=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    rollouts = []
    for _ in range(4):  # two batches' worth of passes: sample, reuse, sample, reuse
        optimizer.zero_grad()
        trainer.batch_loss(batch).backward()
        optimizer.step()
        rollouts.append(trainer.rollout)
    assert rollouts[0] is rollouts[1] and rollouts[2] is rollouts[3] and rollouts[1] is not rollouts[2]
    clip_fractions = [float(stats["clip_fraction"]) for stats in trainer.batch_stats]
    assert clip_fractions[0] == clip_fractions[2] == 0.0  # a fresh rollout: π_θ = π_old, ratio 1
    assert clip_fractions[1] > 0 and clip_fractions[3] > 0  # the second pass, after a large step, clips
    assert list(RepeatedBatches(["a", "b"], 3)) == ["a"] * 3 + ["b"] * 3 and len(RepeatedBatches(["a", "b"], 3)) == 6


def test_exact_kl_ignores_excluded_items_and_has_finite_gradients():
    logits = torch.tensor([[float("-inf"), 1.0, 2.0, float("-inf"), 0.5]], requires_grad=True)
    log_p = torch.log_softmax(logits, -1)
    log_q = torch.log_softmax(torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf"), 0.0]]), -1)
    kl = exact_kl(log_p, log_q)
    p = log_p.exp()[0, [1, 2, 4]]
    assert kl.item() == pytest.approx((p * (p.log() - math.log(1 / 3))).sum().item())
    kl.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert exact_kl(log_q, log_q).item() == 0.0


def test_dpo_loss_against_hand_computed_values():
    pc, pr, rc, rr = (LOG(torch.tensor([v])) for v in (0.5, 0.2, 0.25, 0.25))
    margin = math.log(0.5 / 0.25) - math.log(0.2 / 0.25)
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(math.log1p(math.exp(-0.1 * margin)))
    assert dpo_loss(pc, pr, rc, rr, beta=0.1).item() == pytest.approx(0.648382, abs=1e-6)
    assert dpo_loss(pc, pr, pc, pr, beta=0.1).item() == pytest.approx(math.log(2))  # policy = reference
    assert dpo_loss(pr, pc, rc, rr, beta=0.1).item() > math.log(2)  # the rejected item is more likely


def test_rank_pairs_prefers_the_higher_reward_and_drops_ties():
    pairs = torch.tensor([[3, 7], [5, 2], [4, 9]])
    rewards = torch.tensor([[1.0, 4.5], [3.0, 2.0], [2.5, 2.5]])
    chosen, rejected, decided = rank_pairs(pairs, rewards)
    assert chosen[:2, 0].tolist() == [7, 5] and rejected[:2, 0].tolist() == [3, 2]
    assert decided.tolist() == [1.0, 1.0, 0.0]


def excluded_mask(history, n_items):
    """The dense [M, n_items] mask of the padding and the items of ``history`` [M, window]."""
    mask = torch.zeros(len(history), n_items, dtype=torch.bool).scatter_(1, history, True)
    mask[:, 0] = True
    return mask


def test_history_items_and_sampling_never_return_history_or_padding():
    item_seq = torch.tensor([[3, 5, 3, 9, 0, 0], [2, 0, 0, 0, 0, 0], [4, 6, 7, 8, 1, 2]])  # the last fills the window
    rows, positions = torch.tensor([0, 0, 0, 0, 1, 2]), torch.tensor([0, 1, 2, 3, 0, 5])
    history = history_items(item_seq, rows, positions)
    excluded = excluded_mask(history, n_items=12)
    for m, (b, t) in enumerate(zip(rows.tolist(), positions.tolist())):
        expected = {0, *item_seq[b, : t + 1].tolist()}
        assert set(excluded[m].nonzero().flatten().tolist()) == expected
    model = make_model(n_items=12).eval()
    states = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    log_probs = log_policy(model, states, history)
    assert torch.isneginf(log_probs[excluded]).all() and torch.isfinite(log_probs[~excluded]).all()
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(6))
    draws = sample_items(log_probs, 2000, temperature=50.0)  # nearly flat: would hit history if allowed
    assert not excluded.gather(1, draws).any()
    pairs = sample_items(log_probs, 2, replacement=False)
    assert (pairs[:, 0] != pairs[:, 1]).all() and not excluded.gather(1, pairs).any()
    pairs = sample_distinct_pairs(log_probs, temperature=50.0)
    assert (pairs[:, 0] != pairs[:, 1]).all() and not excluded.gather(1, pairs).any()


@pytest.mark.parametrize("draws", [8, 2])  # 2: most rows need the fallback draw
def test_distinct_pairs_follow_sampling_without_replacement(draws):
    p = torch.tensor([0.0, 0.6, 0.3, 0.1])
    torch.manual_seed(0)
    pairs = sample_distinct_pairs(p.log().expand(40000, 4), draws=draws)
    assert (pairs[:, 0] != pairs[:, 1]).all() and (pairs > 0).all()
    for first in (1, 2, 3):
        for second in (1, 2, 3):
            if first != second:  # P(first, second) = p_first * p_second / (1 - p_first)
                expected = (p[first] * p[second] / (1 - p[first])).item()
                frequency = ((pairs[:, 0] == first) & (pairs[:, 1] == second)).float().mean().item()
                assert frequency == pytest.approx(expected, abs=0.01)


def planted_batch(rng, n_users=64, n_items=41):
    """A user of group g (0 or 1) starts with item 1 + g, then mostly watches items of parity g;
    the planted rule: an item of parity g is rated 5, any other 1."""
    histories, ratings, targets, target_ratings = [], [], [], []
    for _ in range(n_users):
        group = rng.randrange(2)
        parities = [group if rng.random() < 0.8 else 1 - group for _ in range(MAX_LEN)]
        items = [1 + group] + [rng.randrange(2, n_items // 2) * 2 + parity for parity in parities]
        rated = [5.0 if item % 2 == group else 1.0 for item in items]
        histories.append(items[:-1])
        ratings.append(rated[:-1])
        targets.append(items[-1])
        target_ratings.append(rated[-1])
    times = [[i * DAY for i in range(MAX_LEN)]] * n_users
    return make_batch(histories, times, targets, [MAX_LEN * DAY] * n_users, ratings=(ratings, target_ratings))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: faster than sharing the cores
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_reward_head_learns_a_planted_rating_rule(one_thread):
    rng = random.Random(0)
    model = make_model("CE", n_items=41, reward_head=True, dropout_prob=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(250):
        optimizer.zero_grad()
        model.calculate_loss(planted_batch(rng)).backward()
        optimizer.step()
    test = planted_batch(rng, n_users=256)
    with torch.no_grad():
        states, targets, mask = model.position_states(test)
        ratings = model.position_losses(test)[2][mask]
        head_mse = ((model.predict_reward(states, targets) - ratings) ** 2).mean().item()
    global_mse = ((ratings - ratings.mean()) ** 2).mean().item()  # the global mean, even fitted on the test set
    assert head_mse < 0.25 * global_mse, (head_mse, global_mse)


def test_calculate_loss_adds_the_weighted_reward_mse():
    model = make_model("CE", n_items=41, reward_head=True, reward_loss_weight=0.5).eval()
    batch = planted_batch(random.Random(1), n_users=4)
    with torch.no_grad():
        loss, mask, ratings = model.position_losses(batch)
        states, targets, _ = model.position_states(batch)
        mse = ((model.predict_reward(states, targets) - ratings[mask]) ** 2).mean()
        assert model.reward_head.offset.item() == 3.0  # FakeDataset's mean training rating
        assert torch.allclose(model.calculate_loss(batch), loss.sum() / mask.sum() + 0.5 * mse)


# ---- end to end on a slice of ml-100k ----


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("rlhf")


@pytest.fixture(scope="module")
def ppo_run(workdir, ml100k_slice):
    return run_cli(workdir, "--model=PPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *TWO_EPOCHS)


@pytest.mark.slow
def test_ppo_cli_trains_from_a_bc_checkpoint_with_reward_head(ppo_run):
    process, results = ppo_run
    assert process.returncode == 0, process.stderr[-2000:]
    assert results["model"] == "PPO" and len(results["epoch_log"]) == 2
    assert {"sample_reward", "kl_to_bc", "clip_fraction"} <= set(results["epoch_log"][-1])
    kl = [entry["kl_to_bc"] for entry in results["epoch_log"]]
    assert all(0 < value < 0.01 for value in kl)  # near the BC policy it starts at (first pass: KL 0), not at it
    assert all(0 <= entry["clip_fraction"] <= 1 for entry in results["epoch_log"])  # its avg_reward: the diagnostics test
    bc = load_checkpoint(results["pretrained_checkpoint"])
    ppo = load_checkpoint(results["checkpoint"])
    assert bc["config"]["reward_head"] is True
    head = [k for k in bc["state_dict"] if k.startswith("reward_head.")]
    assert head and all(torch.equal(bc["state_dict"][k], ppo["state_dict"][k]) for k in head)  # frozen


@pytest.mark.slow
def test_dpo_cli_runs_from_the_same_bc_checkpoint(workdir, ml100k_slice, ppo_run, tmp_path, monkeypatch):
    process, results = run_cli(
        workdir, "--model=DPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *TWO_EPOCHS
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert results["pretrained_checkpoint"] == ppo_run[1]["pretrained_checkpoint"]  # BC + reward head, reused
    assert results["model"] == "DPO"
    assert results["avg_reward"] == pytest.approx(diagnosed_avg_reward(results, ml100k_slice, tmp_path, monkeypatch))
    log = results["epoch_log"][0]
    assert 0.5 < log["decided_fraction"] <= 1.0 and log["train_loss"] == pytest.approx(math.log(2), abs=1e-3)


def diagnosed_avg_reward(results, data_path, output_dir, monkeypatch):
    """The Avg Reward that the diagnostics measure for a run's checkpoint, judged by its BC checkpoint's head."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv (here pytest's options)
    monkeypatch.chdir(output_dir)
    scores = run_diagnostics("ml-100k-slice", results["pretrained_checkpoint"], [results["checkpoint"]], output_dir,
                             {"data_path": str(data_path), "state": "ERROR"})["avg_reward"]
    return scores[Path(results["checkpoint"]).stem]


def without_reward_head(checkpoint_file, path):
    """A copy of a checkpoint as if trained without a reward head, written to ``path``."""
    checkpoint = load_checkpoint(checkpoint_file)
    checkpoint["config"]["reward_head"] = False
    weights = checkpoint["state_dict"]
    checkpoint["state_dict"] = {k: v for k, v in weights.items() if not k.startswith("reward_head.")}
    torch.save(checkpoint, path)
    return path


@pytest.mark.slow
def test_ppo_refuses_a_bc_checkpoint_without_reward_head(workdir, ml100k_slice, ppo_run, tmp_path):
    no_head = without_reward_head(ppo_run[1]["pretrained_checkpoint"], tmp_path / "bc-no-head.pth")
    process, _ = run_cli(
        tmp_path, "--model=PPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={no_head}", *TINY,
    )
    assert process.returncode == 2
    assert process.stderr.strip().splitlines()[-1].startswith("recbole-align: error: PPO needs a reward head")


@pytest.mark.slow
def test_ppo_refuses_ppo_epochs_below_one(workdir, ml100k_slice, ppo_run, tmp_path):
    process, results = run_cli(
        tmp_path, "--model=PPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={ppo_run[1]['pretrained_checkpoint']}", "--ppo_epochs=0", *TINY,
    )
    assert process.returncode == 2 and results is None
    assert process.stderr.strip().splitlines()[-1] == "recbole-align: error: ppo_epochs must be a positive integer; got 0."


@pytest.mark.slow
def test_grpo_cli_runs_from_the_same_bc_checkpoint_with_ppo_statistics(workdir, ml100k_slice, ppo_run, tmp_path,
                                                                       monkeypatch):
    process, results = run_cli(
        workdir, "--model=GRPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *TWO_EPOCHS
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert results["pretrained_checkpoint"] == ppo_run[1]["pretrained_checkpoint"]  # BC + reward head, reused
    assert results["model"] == "GRPO" and len(results["epoch_log"]) == 2
    assert results["avg_reward"] == pytest.approx(diagnosed_avg_reward(results, ml100k_slice, tmp_path, monkeypatch))
    for entry in results["epoch_log"]:
        assert {"sample_reward", "kl_to_bc", "clip_fraction", "clip_objective", "kl_k3"} <= set(entry)
        assert 0 < entry["kl_to_bc"] < 0.1 and entry["kl_k3"] > 0 and 0 <= entry["clip_fraction"] <= 1


@pytest.mark.parametrize("setting, message", [
    ("--grpo_kl=k2", "grpo_kl must be one of ['k3', 'exact'], got 'k2'."),
    ("--num_samples=1", "num_samples must be an integer >= 2 (PPO and GRPO compare the rewards of the num_samples "
                        "items sampled per context); got 1."),
    ("--advantage_eps=0", "advantage_eps must be a number > 0 (it keeps the advantages finite), got 0."),
], ids=["grpo_kl", "num_samples", "advantage_eps"])
@pytest.mark.slow
def test_grpo_refuses_settings_that_cannot_run(ml100k_slice, ppo_run, tmp_path, setting, message):
    process, results = run_cli(
        tmp_path, "--model=GRPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={ppo_run[1]['pretrained_checkpoint']}", setting, *TINY,
    )
    assert process.returncode == 2 and results is None
    assert process.stderr.strip().splitlines()[-1] == f"recbole-align: error: {message}"


@pytest.mark.slow
def test_diagnostics_cli_matches_hand_computed_baselines(workdir, ml100k_slice, ppo_run, tmp_path):
    bc, ppo = ppo_run[1]["pretrained_checkpoint"], ppo_run[1]["checkpoint"]
    no_head = without_reward_head(bc, tmp_path / "bc-no-head.pth")  # a policy trained without a head
    out = workdir / "diagnostics"
    process, _ = run_cli(
        workdir, "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", f"--pretrained_checkpoint={bc}",
        f"--checkpoints={ppo} {no_head}", f"--output_dir={out}", "--state=ERROR", script="recbole_align.diagnostics",
    )
    assert process.returncode == 0, process.stderr[-2000:]
    assert "| Metric | User Mean | Item Mean | Global Mean | Trained RM |" in markdown_lines(process.stdout)
    table = pd.read_csv(out / "reward_model.csv", index_col="metric")
    scores = pd.read_csv(out / "avg_reward.csv", index_col="policy")["avg_reward"]
    assert scores.iloc[1] == pytest.approx(ppo_run[1]["avg_reward"])  # the run's avg_reward, same draws
    assert scores["bc-no-head"] == pytest.approx(scores["BC"])  # same policy, same judge, same draws

    # by hand: each user's last interaction is the test case, the one before the valid case
    frame = pd.read_csv(ml100k_slice / "ml-100k-slice" / "ml-100k-slice.inter", sep="\t")
    frame = frame.sort_values(["user_id:token", "timestamp:float"], kind="stable")
    rank_from_end = frame.groupby("user_id:token").cumcount(ascending=False)
    train, test = frame[rank_from_end >= 2], frame[rank_from_end == 0]
    global_mean = train["rating:float"].mean()
    user_means = train.groupby("user_id:token")["rating:float"].mean()
    item_means = train.groupby("item_id:token")["rating:float"].mean()
    predictions = {
        "Global Mean": pd.Series(global_mean, index=test.index),
        "User Mean": test["user_id:token"].map(user_means),
        "Item Mean": test["item_id:token"].map(item_means).fillna(global_mean),  # unseen item: global mean
    }
    for name, predicted in predictions.items():
        error = predicted - test["rating:float"]
        assert table.loc["MSE", name] == pytest.approx((error**2).mean())
        assert table.loc["MAE", name] == pytest.approx(error.abs().mean())
    assert 0 < table.loc["MSE", "Trained RM"] < 5


@pytest.mark.slow
def test_benchmark_tables_from_a_given_bc_checkpoint(workdir, ml100k_slice, ppo_run):
    out = workdir / "benchmark"
    process = run_tool(
        workdir, "recbole_align.benchmark", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--output_dir={out}", f"--pretrained_checkpoint={ppo_run[1]['pretrained_checkpoint']}", "--methods=PPO,DPO",
        "--baselines=[]", "--trace", *TINY,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    rows = pd.read_csv(out / "runs.csv").set_index("run")
    assert list(rows.index) == ["BC", "PPO", "DPO"]
    assert rows.loc["BC", "model"] == "PPO" and rows.loc["BC", "epochs"] == 0  # the checkpoint, evaluated
    (scores,) = (out / "diagnostics").glob("*/avg_reward.csv")
    bc_score = pd.read_csv(scores, index_col="policy")["avg_reward"]["BC"]
    assert rows.loc["BC", "avg_reward"] == pytest.approx(bc_score)  # 0-epoch run and diagnostics agree
    table = markdown_lines((out / "table.md").read_text())
    assert "| Method | NDCG@10 | NDCG@50 | HR@10 | HR@50 | MRR | Avg Reward | epoch |" in table
    assert "PPO per epoch (seed 2020):" in table and "| Metric | User Mean | Item Mean | Global Mean | Trained RM |" in table


def dense_log_policy(model, states, excluded, temperature=1.0):
    """log π over the catalogue from a dense exclusion mask, as the code before history indices computed it."""
    logits = model.catalogue_logits(states).masked_fill_(excluded, float("-inf"))
    return torch.log_softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("given_log_norm", [False, True])
def test_chunked_log_probs_and_kl_equal_the_dense_ones_with_gradients(given_log_norm):
    from recbole_align.trainer import on_policy

    model, reference = make_model(n_items=12).eval().double(), make_model(n_items=12, seed=1).eval().double()
    item_seq = torch.tensor([[3, 5, 3, 9, 0, 0], [4, 6, 7, 8, 1, 2]])
    rows, positions = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 3, 0, 2, 5])
    history = history_items(item_seq, rows, positions)
    excluded = excluded_mask(history, n_items=12)
    states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1).requires_grad_()
    reference_states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    actions = torch.tensor([[10, 11], [1, 2], [3, 5], [9, 10], [11, 3]])
    log_pi = dense_log_policy(model, states, excluded, 0.7)
    expected = (log_pi.gather(1, actions), exact_kl(log_pi, dense_log_policy(reference, reference_states, excluded, 0.7)))
    upstream = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    inputs = (states, model.item_embedding.weight)
    expected_grads = torch.autograd.grad((expected[0] * upstream[0]).sum() + (expected[1] * upstream[1]).sum(), inputs)
    model.catalogue_chunk_rows = reference.catalogue_chunk_rows = 2  # three chunks
    log_norm = on_policy.log_normaliser(reference, reference_states, history, 0.7) if given_log_norm else None
    actual = on_policy.log_probs_and_kl(model, states, reference, reference_states, history, actions, 0.7, log_norm)
    actual_grads = torch.autograd.grad((actual[0] * upstream[0]).sum() + (actual[1] * upstream[1]).sum(), inputs)
    assert torch.allclose(actual[0], expected[0]) and torch.allclose(actual[1], expected[1])
    assert all(torch.allclose(a, e) for a, e in zip(actual_grads, expected_grads))


def test_ppo_loss_and_gradients_equal_the_dense_computation():
    """PPO's loss of a pass (log π at the rollout's items and the exact KL through the chunked,
    history-indexed path, π_BC's log-normaliser cached) and its gradients equal those of the dense
    catalogue-wide computation (the estimator of the code before the rollout cache)."""
    from recbole_align.trainer import on_policy

    model, reference = make_model(n_items=12).eval().double(), make_model(n_items=12, seed=1).eval().double()
    item_seq = torch.tensor([[3, 5, 3, 9, 0, 0], [4, 6, 7, 8, 1, 2]])
    rows, positions = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 3, 0, 2, 5])
    history = history_items(item_seq, rows, positions)
    states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1).requires_grad_()
    reference_states = torch.nn.functional.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    actions = torch.tensor([[10, 11], [1, 2], [3, 5], [9, 10], [11, 3]])
    log_old = torch.randn(5, 2, dtype=torch.float64) - 2.0
    rewards = torch.tensor([[4.0, 2.0], [1.0, 5.0], [3.0, 3.5], [2.0, 2.5], [5.0, 1.0]], dtype=torch.float64)
    inputs = (states, model.item_embedding.weight)
    log_pi = dense_log_policy(model, states, excluded_mask(history, 12))
    kl = exact_kl(log_pi, dense_log_policy(reference, reference_states, excluded_mask(history, 12)))
    expected, _ = ppo_loss(log_pi.gather(1, actions), log_old, kl, rewards, clip_epsilon=0.2, kl_coef=0.05)
    model.catalogue_chunk_rows = reference.catalogue_chunk_rows = 2
    log_norm = on_policy.log_normaliser(reference, reference_states, history)
    chunked_log_pi, chunked_kl = on_policy.log_probs_and_kl(model, states, reference, reference_states, history, actions,
                                                            reference_log_norm=log_norm)
    actual, _ = ppo_loss(chunked_log_pi, log_old, chunked_kl, rewards, clip_epsilon=0.2, kl_coef=0.05)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-12)
    for a, e in zip(torch.autograd.grad(actual, inputs), torch.autograd.grad(expected, inputs)):
        assert torch.allclose(a, e, rtol=1e-10, atol=1e-12)


def test_log_probs_and_kl_run_in_fp32_under_bf16_autocast_with_bf16_states():
    """A backbone whose states come out of autocast in bf16 (GRU4Rec's): the forward and backward
    passes run in fp32 on the states cast up, and the states' gradient comes back in bf16."""
    from recbole_align.trainer.on_policy import log_probs_and_kl

    model, reference = make_model(n_items=12).eval(), make_model(n_items=12, seed=1).eval()
    history = history_items(torch.tensor([[3, 5, 3, 9, 0, 0]]), torch.tensor([0, 0]), torch.tensor([1, 3]))
    states = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1).bfloat16().requires_grad_()
    reference_states = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1).bfloat16()
    actions = torch.tensor([[10, 11], [1, 2]])

    def values_and_gradient(states, autocast):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            log_probs, kl = log_probs_and_kl(model, states, reference, reference_states, history, actions, 0.7)
            loss = log_probs.sum() + kl.sum()
        return log_probs, kl, torch.autograd.grad(loss, states)[0]

    log_probs, kl, grad = values_and_gradient(states, autocast=True)
    fp32_states = states.detach().float().requires_grad_()
    expected = values_and_gradient(fp32_states, autocast=False)
    assert log_probs.dtype == kl.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert torch.equal(log_probs, expected[0]) and torch.equal(kl, expected[1])
    assert torch.allclose(grad.float(), expected[2], rtol=1e-2, atol=1e-3)


def test_dpo_margin_from_pair_logits_equals_the_log_probability_margin():
    model, reference = make_model(n_items=12).eval(), make_model(n_items=12, seed=1).eval()
    history = history_items(torch.tensor([[3, 5, 0]]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    states = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    chosen, rejected = torch.tensor([[1], [2]]), torch.tensor([[7], [11]])
    log_pi, log_ref = log_policy(model, states, history), log_policy(reference, states, history)
    from_log_probs = dpo_loss(log_pi.gather(1, chosen), log_pi.gather(1, rejected),
                              log_ref.gather(1, chosen), log_ref.gather(1, rejected), beta=0.1)
    from_logits = dpo_loss(model.item_logits(states, chosen), model.item_logits(states, rejected),
                           reference.item_logits(states, chosen), reference.item_logits(states, rejected), beta=0.1)
    assert torch.allclose(from_logits, from_log_probs, atol=1e-5)


def test_catalogue_wide_sampling_and_kl_in_blocks_equal_one_block():
    """PPO's rollout sampling, DPO's pair sampling and its logged KL give, under one seed, the same items
    and values in blocks of 3 rows (a tiny catalogue_chunk_mb) as in one block of all 7 (on a flat policy,
    where a pair's second item is always among its first draws: a redraw consumes the seed's stream
    block by block, so on a peaked policy the blocks draw other, equally distributed, pairs)."""
    from recbole_align.trainer import on_policy

    model, reference = make_model(n_items=30, temperature=1.0).eval(), make_model(n_items=30, seed=1).eval()
    rows, positions = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 3, 5])
    history = history_items(torch.tensor([[3, 5, 3, 9, 0, 0], [4, 6, 7, 8, 1, 2]]), rows, positions)
    states = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)
    reference_states = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1)

    def computed(block_rows):
        model.catalogue_chunk_rows = reference.catalogue_chunk_rows = block_rows
        torch.manual_seed(5)
        return (*on_policy.sample_with_log_probs(model, states, history, 4, 0.8),
                on_policy.sample_pairs(model, states, history, 0.8),
                on_policy.policy_kl(model, reference, states, reference_states, history))

    one_block, in_blocks = computed(1024), computed(3)
    for whole, blocks in zip(one_block, in_blocks):
        assert torch.allclose(whole, blocks, atol=1e-6) if whole.is_floating_point() else torch.equal(whole, blocks)
    actions, _, pairs, _ = in_blocks
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert not (actions.unsqueeze(2) == history.unsqueeze(1)).any()  # nothing of the history, nor padding


def test_a_rollout_is_scored_as_the_policy_under_bf16_autocast():
    """PPO's first pass samples its rollout (log pi_old) and then scores it with gradients (log pi_theta):
    under ``mixed_precision: bf16`` both are computed in fp32, so that the first pass's ratio is exactly 1."""
    from recbole_align.trainer import on_policy

    model, reference = make_model(n_items=30).eval(), make_model(n_items=30, seed=1).eval()
    rows, positions = torch.tensor([0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 2, 0, 1, 3, 5])
    history = history_items(torch.tensor([[3, 5, 3, 9, 0, 0], [4, 6, 7, 8, 1, 2]]), rows, positions)
    torch.manual_seed(3)
    states = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1).bfloat16()  # as a bf16 forward leaves them
    reference_states = torch.nn.functional.normalize(torch.randn(7, 8), dim=-1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions, log_old = on_policy.sample_with_log_probs(model, states, history, 16)
        log_pi, _ = on_policy.log_probs_and_kl(model, states, reference, reference_states, history, actions)
        scored = on_policy.log_probs_at(model, states, history, actions)
    assert log_old.dtype == torch.float32 and torch.allclose(log_pi, log_old, atol=1e-5)
    assert torch.allclose(scored, log_old, atol=1e-5)
