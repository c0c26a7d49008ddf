"""Reward-weighted post-training (Exp-RSFT, RSFT, DRPO): weight functions on hand-made tensors, the
DRPO controller, trajectory-level Exp-RSFT, gradients, config and data errors, end-to-end CLI runs
(with trajectory weights and reward noise), the BC stage's reuse key and the λ sweep."""

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from conftest import ML100K_INTER, TINY, markdown_lines, run_cli, run_tool, tiny, write_atomic
from recbole_align.data.fingerprint import file_fingerprint, package_version, stale_inputs
from recbole_align.errors import AlignError
from recbole_align.stages import plan_run
from recbole_align.trainer.reward_weighted import (
    KeepFractionController,
    check_config,
    drpo_weights,
    exp_weights,
    linear_weights,
    mean_normalized,
    resolve_settings,
    return_statistics,
    reward_weighted_loss,
    sum_normalized,
    top_fraction,
    training_returns,
    trajectory_weights,
    uniform_weights,
    window_returns,
    window_sums,
)
from test_hstu import make_batch, make_model

R = torch.tensor


def drpo(variant="adaptive", keep=0.5, margin=0.1, **extra):
    controller = {"drpo_grow": 1.02, "drpo_shrink": 0.98, "drpo_std_ratio": 0.5, "drpo_min_fraction": 0.05}
    return {"drpo_variant": variant, "drpo_keep_fraction": keep, "drpo_tie_margin": margin, **controller, **extra}


# ---- weight functions against hand-computed values --------------------------------------------


def test_exp_weights_are_shifted_exp_r_over_lambda():
    w = exp_weights(R([1.0, 3.0, 5.0]), {"reward_lambda": 0.5, "reward_max": 5.0})
    assert torch.allclose(w, R([math.exp(-8), math.exp(-4), 1.0]))
    # the fixed shift is one constant factor: ratios are the paper's exp(r/λ) ratios
    assert torch.allclose(w / w[2], torch.exp(R([1.0, 3.0, 5.0]) / 0.5) / math.exp(10))
    # the same constant in a batch without a 5 (a per-batch max shift would rescale this batch)
    w = exp_weights(R([3.0, 4.0]), {"reward_lambda": 0.5, "reward_max": 5.0})
    assert torch.allclose(w, R([math.exp(-4), math.exp(-2)]))


def test_exp_weights_do_not_overflow_at_lambda_001():
    ratings = R([1.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    assert torch.isinf(torch.exp(ratings / 0.01)).any()  # the unshifted weights overflow float32
    w = exp_weights(ratings, {"reward_lambda": 0.01, "reward_max": 5.0})
    assert torch.isfinite(w).all() and w.max() == 1.0 and w.min() >= 0
    assert w.tolist()[-2:] == [1.0, 1.0] and 0 < w[3] < 1e-40  # exp(-100): a float32 denormal
    losses = R([2.0, 3.0, 1.0, 4.0, 2.5, 0.5])
    for reduce in (mean_normalized, sum_normalized):
        assert torch.isfinite(reduce(losses, w))
    assert sum_normalized(losses, w) == pytest.approx(1.5)  # the two 5-star positions, equally weighted


def test_linear_weights_raw_rescaled_and_standardised():
    ratings = R([1.0, 4.0, 5.0])
    raw = {"rescale_rewards": False, "standardize_rewards": False}
    assert linear_weights(ratings, raw).tolist() == [1.0, 4.0, 5.0]
    rescaled = linear_weights(ratings, {**raw, "rescale_rewards": True, "reward_min": 1.0, "reward_max": 5.0})
    assert rescaled.tolist() == [0.0, 0.75, 1.0]
    settings = resolve_settings(settings_config(reward_weighting="linear", standardize_rewards=True), ratings.double())
    standardised = linear_weights(ratings.double(), settings)
    assert standardised.mean().item() == pytest.approx(0) and standardised.std(correction=0).item() == pytest.approx(1)
    assert standardised[0] < 0 < standardised[2]  # below-mean ratings push their items down


def test_uniform_weights_make_the_loss_the_bc_loss():
    ratings, losses = R([1.0, 4.0, 5.0]), R([2.0, 1.0, 3.0])
    assert mean_normalized(losses, uniform_weights(ratings, {})) == pytest.approx(losses.mean().item())


def test_normalizations():
    losses, w = R([1.0, 2.0, 3.0]), R([1.0, 0.0, 3.0])
    assert mean_normalized(losses, w) == pytest.approx(10 / 3)  # (1/N) sum w l
    assert sum_normalized(losses, w) == pytest.approx(2.5)  # sum w l / sum w
    assert sum_normalized(losses, 7 * w) == pytest.approx(2.5)
    assert mean_normalized(losses, 7 * w) == pytest.approx(70 / 3)


def test_drpo_adaptive_weights():
    rewards = R([5.0, 4.0, 3.0, 2.0, 1.0, 5.0, 4.0, 3.0])
    w = drpo_weights(rewards, drpo())  # top 4 of 8: the 5s and 4s; ν = 4 - 0.1
    advantages = R([1.1, 0.1, 1.1, 0.1])  # A = r - ν; std(A) = 0.5
    expected = torch.zeros(8)
    expected[[0, 1, 5, 6]] = advantages / (0.5 + 0.1) * 8 / 4
    assert torch.allclose(w, expected)
    assert mean_normalized(torch.ones(8), w) == pytest.approx((advantages / 0.6).mean().item())  # paper: mean over K


def test_drpo_all_equal_kept_set_still_gets_gradient():
    rewards = R([5.0, 3.0, 5.0, 2.0, 5.0, 1.0, 5.0, 3.0])
    kept = rewards[rewards == 5.0]
    assert (kept - kept.min()).abs().sum() == 0  # the paper's A = r - min(kept): no gradient at all
    w = drpo_weights(rewards, drpo())
    assert torch.allclose(w, R([2.0, 0.0, 2.0, 0.0, 2.0, 0.0, 2.0, 0.0]))  # indicators (Adaptive-BC) * N/|K|
    logits = torch.zeros(8, requires_grad=True)
    mean_normalized(-torch.log_softmax(logits, 0), w).backward()
    assert logits.grad.abs().sum() > 0


def test_top_fraction_breaks_ties_at_the_cut_at_random():
    rewards = R([4.0, 4.0, 5.0, 4.0])
    chosen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        keep = top_fraction(rewards, 0.5)
        assert keep.sum() == 2 and keep[2]
        chosen.add(tuple(keep.nonzero().flatten().tolist()))
    assert len(chosen) == 3  # each tied 4 is kept in some batches
    assert top_fraction(rewards, 0.01).sum() == 1  # at least one position


def test_drpo_fixed_and_exp_variants():
    rewards = R([5.0, 4.0, 2.0, 1.0])
    w = drpo_weights(rewards, drpo("fixed", drpo_threshold=4))  # K = {5, 4}; ν = 3.9, A = (1.1, 0.1), std 0.5
    assert torch.allclose(w, R([1.1 / 0.6 * 2, 0.1 / 0.6 * 2, 0.0, 0.0]))
    w = drpo_weights(rewards, drpo("exp", drpo_beta=0.05, reward_min=1.0, reward_max=5.0))
    # K = {5, 4} -> r~ = (1, 0.75), mean 0.875
    assert torch.allclose(w, R([math.exp(2.5) * 2, math.exp(-2.5) * 2, 0.0, 0.0]))


def test_drpo_controller_on_a_scripted_batch_stream():
    narrow = (R([5.0, 5.0, 1.0, 1.0]), R([True, True, False, False]))  # std(kept) 0 < 0.5 * std 2
    wide = (R([5.0, 1.0, 3.0, 3.0]), R([True, True, False, False]))  # std(kept) 2 >= 0.5 * 1.41
    controller = KeepFractionController()
    sequence = [controller.update(*batch) for batch in (narrow, narrow, wide, wide)]
    assert sequence == pytest.approx([0.51, 0.5202, 0.509796, 0.49960008])
    top = KeepFractionController(0.995)
    assert [top.update(*narrow), top.update(*narrow)] == [1.0, 1.0]
    bottom = KeepFractionController(0.051)
    assert [bottom.update(*wide), bottom.update(*wide)] == [0.05, 0.05]


# ---- trajectory-level Exp-RSFT (paper sec. 5) ----------------------------------------------------


def test_window_returns_with_a_partial_last_window_and_padding():
    ratings = R([[5.0, 4.0, 3.0, 2.0, 1.0, 5.0, 4.0], [1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0]])  # row 1: 4 valid, 9s are padding
    mask = torch.arange(7) < R([[7], [4]])
    returns, windows = window_sums(ratings, mask, 3)
    # [5,4,3] [2,1,5] [4] | [1,2,3] [4]: a partial window's return is T times its mean rating
    assert returns.tolist() == [[12.0, 8.0, 12.0], [6.0, 12.0, 0.0]]
    assert windows.tolist() == [[True, True, True], [True, True, False]]
    assert window_returns(ratings, mask, 3).tolist() == [[12, 12, 12, 8, 8, 8, 12], [6, 6, 6, 12, 0, 0, 0]]
    assert torch.equal(window_returns(ratings, mask, 1), ratings * mask)  # T = 1: each position's rating
    assert window_returns(ratings, mask, 7).tolist() == [[24] * 7, [17.5] * 4 + [0] * 3]  # one window a sequence


def test_trajectory_weights_by_hand():
    settings = {"return_mean": 6.0, "return_std": 2.0, "return_max": 3.0, "reward_lambda": 1.0}
    w = trajectory_weights(R([12.0, 8.0, 4.0, 6.0]), settings)  # R~ = 3, 1, -1, 0; w = exp(R~ - 3)
    assert torch.allclose(w, R([1.0, math.exp(-2), math.exp(-4), math.exp(-3)]))
    tiny_lambda = trajectory_weights(R([12.0, 8.0]), {**settings, "reward_lambda": 0.01})
    assert torch.isfinite(tiny_lambda).all() and tiny_lambda.tolist() == [1.0, 0.0]  # exp(-200) underflows, no overflow


def test_return_statistics_and_t1_is_item_scope_at_lambda_sigma():
    returns = torch.tensor([12.0, 8.0, 4.0, 6.0, 4.0], dtype=torch.float64)
    stats = return_statistics(returns)
    assert stats["return_mean"] == pytest.approx(6.8) and stats["return_std"] == pytest.approx(math.sqrt(8.96))
    assert stats["return_max"] == pytest.approx(5.2 / math.sqrt(8.96))
    # T = 1 standardises single ratings: exp(((r - μ)/σ - (r_max - μ)/σ)/λ) = exp((r - r_max)/(λσ)) (sec. 5, Obs. 3.1)
    w = trajectory_weights(returns, {**stats, "reward_lambda": 0.5})
    assert torch.allclose(w, exp_weights(returns, {"reward_lambda": 0.5 * stats["return_std"], "reward_max": 12.0}))
    with pytest.raises(AlignError, match="all 3 training windows have the same return 4"):
        return_statistics(torch.full((3,), 4.0, dtype=torch.float64))


def rated_batch():
    """Two histories of 4 and 2 items; the positions' next ratings are [1, 2, 4, 3] and [5, 1]."""
    return make_batch(
        [[1, 2, 3, 4], [5, 6]], [[0.0, 1.0, 2.0, 3.0], [0.0, 9.0]], [7, 8], [4.0, 10.0],
        ratings=([[5.0, 1.0, 2.0, 4.0, 0, 0, 0, 0], [1.0, 5.0, 0, 0, 0, 0, 0, 0]], [3.0, 1.0]),
    )


def test_training_returns_one_per_window_of_the_training_sequences():
    config = {"RATING_FIELD": "rating", "LIST_SUFFIX": "_list", "ITEM_LIST_LENGTH_FIELD": "item_length"}
    dataset = SimpleNamespace(inter_feat=rated_batch())
    assert training_returns(dataset, {**config, "trajectory_length": 3}).tolist() == [7.0, 9.0, 9.0]  # [1,2,4] [3] | [5,1]
    assert training_returns(dataset, {**config, "trajectory_length": 2}).tolist() == [3.0, 7.0, 6.0]


def test_trajectory_loss_weights_every_position_by_its_window():
    model = make_model("CE").eval()
    stats = {"return_mean": 5.0, "return_std": 2.0, "return_max": 2.0}
    settings = {"reward_lambda": 0.5, "reward_scope": "trajectory", "trajectory_length": 3, **stats}
    loss, rewards, weights = reward_weighted_loss(model, rated_batch(), "exp", settings, "mean")
    assert rewards.tolist() == [7.0, 7.0, 7.0, 9.0, 9.0, 9.0]  # [1,2,4] [3] | [5,1]; partial windows: T x mean
    expected = torch.exp(((rewards - 5.0) / 2.0 - 2.0) / 0.5)  # 1 at R = 9, the largest return
    assert torch.allclose(weights, expected) and weights.max() == 1.0
    losses, mask, _ = model.position_losses(rated_batch())
    assert loss.item() == pytest.approx((expected * losses[mask]).mean().item(), rel=1e-6)  # eq. 20, mean over positions
    item_settings = {"reward_lambda": 0.5, "reward_max": 5.0}
    item = reward_weighted_loss(model, rated_batch(), "exp", item_settings, "mean")
    scoped = reward_weighted_loss(model, rated_batch(), "exp", {**item_settings, "reward_scope": "item"}, "mean")
    assert all(torch.equal(a, b) for a, b in zip(item, scoped))  # item scope: the item weights, unchanged
    rsft, rsft_rewards, rsft_weights = reward_weighted_loss(model, rated_batch(), "linear", settings, "mean")
    assert torch.equal(rsft_rewards, rewards) and rsft_weights.tolist() == [1.0] * 3 + [2.0] * 3  # w = R~ = (R - 5)/2
    assert rsft.item() == pytest.approx((rsft_weights * losses[mask]).mean().item(), rel=1e-6)


# ---- gradients through the trainer's loss ------------------------------------------------------


def _gradient(loss, model):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_exp_rsft_with_huge_lambda_has_the_bc_gradient_direction():
    model = make_model("CE").eval()  # exact softmax, no dropout: deterministic losses
    batch = rated_batch()
    bc = _gradient(model.calculate_loss(batch), model)
    cosines = {}
    for lam in (1e6, 0.5):
        settings = {"reward_lambda": lam, "reward_max": 5.0}
        loss, rewards, _ = reward_weighted_loss(model, batch, "exp", settings, "mean")
        assert rewards.tolist() == [1.0, 2.0, 4.0, 3.0, 5.0, 1.0]
        cosines[lam] = torch.nn.functional.cosine_similarity(_gradient(loss, model), bc, dim=0).item()
    assert cosines[1e6] > 0.99999
    assert cosines[0.5] < 0.99  # a real λ changes the direction


# ---- config and data errors --------------------------------------------------------------------


BASE = {"reward_weighting": "exp", "weight_normalization": "mean", "reward_lambda": 0.5, "reward_scope": "item",
        "reward_max": None, "rescale_rewards": False, "standardize_rewards": False}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"reward_lambda": 0}, "reward_lambda must be a number > 0, got 0"),
        ({"reward_lambda": -1.0}, "reward_lambda must be a number > 0"),
        ({"reward_lambda": "abc"}, "reward_lambda must be a number > 0"),
        ({"reward_weighting": "softmax"}, "reward_weighting must be one of"),
        ({"weight_normalization": "max"}, "weight_normalization must be one of"),
        ({"reward_weighting": "drpo", **drpo("best")}, "drpo_variant must be one of"),
        ({"reward_weighting": "drpo", **drpo(keep=0)}, "drpo_keep_fraction must be in (0, 1]"),
        ({"reward_weighting": "drpo", **drpo(keep=1.5)}, "drpo_keep_fraction must be in (0, 1]"),
        ({"reward_weighting": "drpo", **drpo(margin=0)}, "drpo_tie_margin must be a number > 0"),
        ({"reward_weighting": "drpo", **drpo(drpo_grow=0.9)}, "drpo_grow must be a number >= 1, got 0.9"),
        ({"reward_weighting": "drpo", **drpo(drpo_shrink=True)}, "drpo_shrink must be in (0, 1], got True"),
        ({"reward_weighting": "drpo", **drpo(drpo_std_ratio=0)}, "drpo_std_ratio must be a number > 0"),
        ({"reward_weighting": "drpo", **drpo(keep=0.04)}, "drpo_min_fraction must be in (0, drpo_keep_fraction=0.04]"),
        ({"reward_weighting": "drpo", **drpo("fixed", drpo_threshold=None)}, "needs a numeric drpo_threshold"),
        ({"reward_weighting": "drpo", **drpo("exp", drpo_beta=0)}, "drpo_beta must be a number > 0"),
        ({"reward_weighting": "drpo", **drpo(), "reward_scope": "trajectory"}, "reward_scope=trajectory is Exp-RSFT's and RSFT's"),
        ({"reward_weighting": "linear", "reward_scope": "trajectory", "rescale_rewards": True}, "rescale_rewards does not apply"),
        ({"reward_scope": "trajectory", "reward_max": 5}, "leave reward_max: ~"),
        ({"reward_weighting": "linear", "standardize_rewards": True, "weight_normalization": "sum"},
         "standardised weights (R - mean)/std sum to about 0: use weight_normalization: mean"),
        ({"reward_weighting": "linear", "reward_scope": "trajectory", "weight_normalization": "sum"},
         "standardised weights (R - mean)/std sum to about 0: use weight_normalization: mean"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(AlignError, match=re.escape(message)):
        check_config({**BASE, **changes})


def settings_config(**changes):
    keys = ("reward_max", "reward_min", "rescale_rewards", "standardize_rewards", "drpo_variant", "drpo_keep_fraction",
            "drpo_threshold", "drpo_tie_margin", "drpo_beta", "trajectory_length")
    return {**dict.fromkeys(keys), **BASE, **changes}


def test_settings_from_the_data_and_their_errors():
    ratings = torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64)
    settings = resolve_settings(settings_config(), ratings)
    assert settings["reward_max"] == 5.0 and settings["reward_min"] == 1.0
    assert resolve_settings(settings_config(reward_max=6.0), ratings)["reward_max"] == 6.0
    with pytest.raises(AlignError, match="below the highest training rating"):
        resolve_settings(settings_config(reward_max=4.0), ratings)
    with pytest.raises(AlignError, match="above every training rating .max 5.: DRPO would keep nothing"):
        resolve_settings(settings_config(reward_weighting="drpo", **drpo("fixed", drpo_threshold=6)), ratings)
    with pytest.raises(AlignError, match="need ratings >= 0"):
        resolve_settings(settings_config(reward_weighting="linear", rescale_rewards=False), ratings - 2)
    with pytest.raises(AlignError, match="cannot rescale ratings"):
        resolve_settings(settings_config(reward_weighting="linear", rescale_rewards=True), torch.ones(3))
    with pytest.raises(AlignError, match="cannot standardise ratings"):
        resolve_settings(settings_config(reward_weighting="linear", standardize_rewards=True), torch.ones(3))
    with pytest.raises(AlignError, match="rescale_rewards or standardize_rewards, not both"):
        resolve_settings(settings_config(reward_weighting="linear", standardize_rewards=True, rescale_rewards=True), ratings)


# ---- end to end: CLI runs on a slice of ml-100k -------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("post_training")


@pytest.fixture(scope="module")
def exp_rsft_run(workdir, ml100k_slice):
    """ExpRSFT without a checkpoint: the run trains the BC stage first, then post-trains from it."""
    process, results = run_cli(
        workdir, "--model=ExpRSFT", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *TINY
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return results


def check_post_training(results, model):
    assert results["model"] == model and results["epochs_run"] == len(results["epoch_log"])
    for split in ("valid", "valid_filtered", "test", "test_filtered"):
        assert set(results[split]) == {"hit@10", "hit@50", "ndcg@10", "ndcg@50", "mrr"}
    assert results["n_test_filtered"] > 0
    for epoch in results["epoch_log"]:
        assert epoch["mean_weight"] > 0 and 0 < epoch["ess_share"] <= 1
        assert ("drpo_keep_fraction" in epoch) == (model == "DRPO")


@pytest.mark.slow
def test_exp_rsft_trains_the_bc_stage_then_post_trains(exp_rsft_run):
    check_post_training(exp_rsft_run, "ExpRSFT")
    bc = Path(exp_rsft_run["pretrained_checkpoint"])
    assert bc.is_file() and bc.name.startswith("HSTU-ml-100k-slice-bc-")
    assert exp_rsft_run["config"]["reward_lambda"] == 0.5 and exp_rsft_run["config"]["reward_weighting"] == "exp"
    assert exp_rsft_run["epoch_log"][0]["mean_weight"] <= 1  # exp((r - r_max)/λ) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--reward_scope=trajectory", "--trajectory_length=5"], ["--reward_noise_std=0.5"]])
def test_exp_rsft_with_trajectory_weights_or_noisy_ratings(workdir, ml100k_slice, exp_rsft_run, args):
    process, results = run_cli(
        workdir, "--model=ExpRSFT", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={exp_rsft_run['pretrained_checkpoint']}", *TINY, *args,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    check_post_training(results, "ExpRSFT")
    assert 0 < results["epoch_log"][0]["mean_weight"] <= 1  # shifted by the largest training return or rating
    assert results["epoch_log"][0]["mean_weight"] != exp_rsft_run["epoch_log"][0]["mean_weight"]
    for split in ("valid_filtered", "test_filtered"):  # the evaluator filters on the clean ratings
        assert results[f"n_{split}"] == exp_rsft_run[f"n_{split}"]


def test_bc_stage_key_holds_the_noise_only_with_a_reward_head():
    def bc_path(model, **overrides):
        return plan_run(model, "ml-100k", config_dict={"state": "ERROR", **overrides}).run.config["pretrained_checkpoint"]

    ppo = bc_path("PPO")  # PPO's BC trains a reward head on the (noisy) training ratings
    assert ppo == bc_path("PPO", reward_noise_std=0) != bc_path("PPO", reward_noise_std=0.5) != bc_path("PPO", reward_noise_std=1)
    assert bc_path("ExpRSFT") == bc_path("ExpRSFT", reward_noise_std=0.5) != ppo  # no reward head: BC reads no rating
    assert bc_path("ExpRSFT") == bc_path("ExpRSFT", reward_scope="trajectory")  # a post-training key


@pytest.mark.slow
def test_rsft_from_the_bc_checkpoint(workdir, ml100k_slice, exp_rsft_run):
    bc = exp_rsft_run["pretrained_checkpoint"]
    process, results = run_cli(
        workdir, "--model=RSFT", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={bc}", *tiny("--embedding_size=16", "--reward_head=True", "--epochs=2"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    check_post_training(results, "RSFT")
    assert results["pretrained_checkpoint"] == bc
    # the network's shape comes from the checkpoint, and the run still saves and reloads its best epoch
    assert results["config"]["embedding_size"] == 8 and results["config"]["reward_head"] is False
    assert Path(results["checkpoint"]).is_file()
    assert results["epoch_log"][results["best_epoch"]]["valid_filtered"] == results["valid_filtered"]
    assert 1 <= results["epoch_log"][0]["mean_weight"] <= 5  # w = r, the mean training rating


@pytest.mark.slow
def test_drpo_from_the_bc_checkpoint_adapts_the_kept_fraction(workdir, ml100k_slice, exp_rsft_run):
    bc = exp_rsft_run["pretrained_checkpoint"]
    process, results = run_cli(
        workdir, "--model=DRPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        f"--pretrained_checkpoint={bc}",
        *tiny("--epochs=2", "--stopping_step=5"),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    check_post_training(results, "DRPO")
    first, second = (epoch["drpo_keep_fraction"] for epoch in results["epoch_log"])
    assert first == pytest.approx(0.5, abs=0.01) and second != first and 0.05 <= second <= 1


def rewritten_slice(ml100k_slice, tmp_path, change):
    """The slice with ``change`` applied to its table, under the same dataset name in another folder."""
    frame = pd.read_csv(Path(ml100k_slice) / "ml-100k-slice" / "ml-100k-slice.inter", sep="\t")
    return write_atomic(tmp_path, "ml-100k-slice", change(frame))


def blank_ratings(frame):
    return frame.assign(**{"rating:float": frame["rating:float"].where(frame.index % 50 != 0)})


def text_ratings(frame):
    return frame.astype({"rating:float": object}).assign(
        **{"rating:float": lambda f: f["rating:float"].where(f.index % 50 != 0, "good")}
    )


@pytest.mark.parametrize(
    "change, args, message",
    [
        (blank_ratings, [], "interactions without a numeric rating (empty or NaN)"),
        (text_ratings, [], "could not be loaded"),
        (lambda f: f.drop(columns=["rating:float"]), ["--eval_rating_threshold=None"], "has no rating field [rating]"),
    ],
)
@pytest.mark.slow
def test_rating_errors(tmp_path, ml100k_slice, exp_rsft_run, change, args, message):
    data_path = rewritten_slice(ml100k_slice, tmp_path, change)
    process, results = run_cli(
        tmp_path, "--model=ExpRSFT", "--dataset=ml-100k-slice", f"--data_path={data_path}",
        f"--pretrained_checkpoint={exp_rsft_run['pretrained_checkpoint']}", *TINY, *args,
    )
    assert process.returncode == 2 and results is None
    assert message in process.stderr and process.stderr.startswith("recbole-align: error:")
    assert "Traceback" not in process.stderr and process.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_sweep_and_tables_from_a_given_bc_checkpoint_without_reward_head(workdir, ml100k_slice, exp_rsft_run):
    """The λ sweep (the benchmark's Exp-RSFT row per λ) with DRPO beside them and per-epoch traces."""
    out = workdir / "sweep"
    process = run_tool(
        workdir, "recbole_align.benchmark", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
        "--sweep_lambda=[2,0.5]", "--methods=[DRPO]", "--baselines=[]", "--trace", f"--output_dir={out}",
        f"--pretrained_checkpoint={exp_rsft_run['pretrained_checkpoint']}", *TINY,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    rows = pd.read_csv(out / "runs.csv")
    assert list(rows.run) == ["BC", "DRPO", "ExpRSFT λ=0.5", "ExpRSFT λ=2"]
    assert rows.model[0] == "DRPO" and rows.epochs[0] == 0  # the given checkpoint, evaluated by a 0-epoch run
    assert pd.isna(rows.reward_lambda[1]) and list(rows.reward_lambda[2:]) == [0.5, 2]
    assert {"test_filtered/ndcg@10", "test/ndcg@10", "valid_filtered/mrr", "final_test_filtered/ndcg@10"} <= set(rows)
    assert list(rows.best_epoch[1:]) == [0, 0, 0] and list(rows.final_epoch[1:]) == [0, 0, 0]
    assert (out / "lambda_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "lambda_trade_off.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("lambda_paired_final.csv", "lambda_paired_final_all.csv"):  # every λ row against BC, Holm over them
        pairs = pd.read_csv(out / name, dtype={"seed": str}).query("seed == 'pooled'")
        assert list(zip(pairs.a, pairs.b)) == [("ExpRSFT λ=0.5", "BC"), ("ExpRSFT λ=2", "BC")]
        assert (pairs.p_holm >= pairs.p).all() and (pairs.low <= pairs.difference).all()
    assert "[4/4] ExpRSFT λ=2 seed 2020" in process.stdout
    table = markdown_lines((out / "table.md").read_text())
    assert "| Method | NDCG@10 | NDCG@50 | HR@10 | HR@50 | MRR | epoch |" in table  # no reward head: no Avg Reward
    assert "Table 2 (reward model) not computed" in "\n".join(table)
    trade_off = table[table.index("| Row | all test cases | rated >= threshold |") + 2:][:3]
    assert [line.split(" | ")[0] for line in trade_off] == ["| BC", "| ExpRSFT λ=0.5", "| ExpRSFT λ=2"]
    rows = rows.set_index("run")
    bc_ndcg, drpo_ndcg = rows.loc["BC", "test_filtered/ndcg@10"], rows.loc["DRPO", "test_filtered/ndcg@10"]
    change = f" ({(drpo_ndcg - bc_ndcg) / bc_ndcg * 100:+.1f}%)" if bc_ndcg else ""
    assert any(line.replace("**", "").startswith(f"| DRPO | {drpo_ndcg:.4f}{change} |") for line in table)
    assert "DRPO per epoch (seed 2020):" in table and any("drpo_keep_fraction" in line for line in table)


@pytest.fixture(scope="module")
def sasrec_checkpoint(workdir, ml100k_slice):
    folder = workdir / "sasrec"
    folder.mkdir()
    process, results = run_cli(
        folder, "--model=SASRec", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", "--epochs=1",
        "--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=8", "--inner_size=8", "--n_layers=1", "--state=ERROR",
        "--show_progress=False",
    )
    assert process.returncode == 0, process.stderr[-2000:]
    return results["checkpoint"]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "corrupt", "other model", "other dataset", "other catalogue"])
def test_pretrained_checkpoint_refusals(tmp_path, ml100k_slice, exp_rsft_run, sasrec_checkpoint, case):
    bc, dataset, data_path = exp_rsft_run["pretrained_checkpoint"], "ml-100k-slice", ml100k_slice
    frame = pd.read_csv(ml100k_slice / "ml-100k-slice" / "ml-100k-slice.inter", sep="\t")
    if case == "missing":
        bc, message = tmp_path / "nowhere.pth", "does not exist"
    elif case == "corrupt":
        bc, message = tmp_path / "corrupt.pth", "is not a readable RecBole checkpoint"
        bc.write_bytes(b"not a checkpoint")
    elif case == "other model":
        bc, message = sasrec_checkpoint, "holds a [SASRec] model"
    elif case == "other dataset":
        dataset, message = "renamed-slice", "was trained on dataset [ml-100k-slice], not [renamed-slice]"
        data_path = write_atomic(tmp_path, dataset, frame)
    else:  # same name, fewer users and so fewer items
        data_path = write_atomic(tmp_path, dataset, frame[frame["user_id:token"] <= 20])
        message = "does not fit this model"
    process, results = run_cli(
        tmp_path, "--model=RSFT", f"--dataset={dataset}", f"--data_path={data_path}", f"--pretrained_checkpoint={bc}", *TINY
    )
    assert process.returncode == 2 and results is None
    assert message in process.stderr and "Traceback" not in process.stderr


@pytest.mark.slow
def test_a_bc_stage_is_reused_on_the_same_data_and_retrained_on_changed_data(tmp_path):
    """The BC checkpoint of a post-training run is reused only while the atomic files it was trained on are
    unchanged (size and content): a user who fixes the .inter file gets a BC trained on the fixed data."""
    frame = pd.read_csv(ML100K_INTER, sep="\t")
    frame = frame[frame["user_id:token"].isin(sorted(frame["user_id:token"].unique())[:40])]
    data_path = write_atomic(tmp_path / "data", "edited", frame)

    def run():
        process, results = run_cli(tmp_path, "--model=ExpRSFT", "--dataset=edited", f"--data_path={data_path}",
                                   *tiny("--state=INFO"))
        assert process.returncode == 0, process.stderr[-3000:]
        bc_json = json.loads(Path(results["pretrained_checkpoint"]).with_suffix(".json").read_text())
        return process.stdout + process.stderr, bc_json["identity"]

    _, first = run()
    log, again = run()
    assert "BC stage: reusing" in log and again == first
    inter = data_path / "edited" / "edited.inter"
    assert first["data"] == {"edited.inter": file_fingerprint(inter)}
    write_atomic(tmp_path / "data", "edited", frame.assign(**{"rating:float": 6 - frame["rating:float"]}))
    log, changed = run()
    assert "not reusing" in log and f"edited.inter {first['data']['edited.inter']} -> " in log and changed != first


def test_stale_inputs_names_the_changed_file_and_a_missing_record(tmp_path):
    inter = tmp_path / "d.inter"
    inter.write_text("a\tb\n1\t2\n")
    recorded = file_fingerprint(inter)
    results = tmp_path / "run.json"
    results.write_text(json.dumps({"inputs": {"data": {str(inter): recorded}, "recbole_align": package_version()}}))
    assert stale_inputs(results) == []
    inter.write_text("a\tb\n1\t3\n")  # same size, other content
    assert recorded.startswith("8:") and file_fingerprint(inter).startswith("8:")
    assert stale_inputs(results) == [f"changed since: d.inter ({recorded} -> {file_fingerprint(inter)})"]
    results.write_text(json.dumps({"model": "BC"}))
    assert stale_inputs(results) == ["no record of the data it was trained on (run.json)"]
