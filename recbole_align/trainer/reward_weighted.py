"""Reward-weighted post-training: Exp-RSFT, RSFT and DRPO as one trainer.

Every method minimises a weighted all-position next-item loss over the (history, next item,
rating) positions of a batch, starting from a BC checkpoint:

    L = (1/N) sum_i w_i * (-log pi(a_i | s_i))        weight_normalization: mean (Exp-RSFT Alg. 1)
    L = sum_i w_i * (-log pi(a_i | s_i)) / sum_i w_i  weight_normalization: sum  (Meta's supervision_weights)

over the N valid positions i. The methods differ only in w = WEIGHTS[reward_weighting](r, settings):
small pure functions of the positions' ratings r, testable with hand-made tensors. Exp-RSFT's
``reward_scope: trajectory`` (paper sec. 5) weights each position by its window's standardised
return instead (:func:`window_returns`, :func:`trajectory_weights`). The loop, checkpointing,
early stopping and evaluation are RecBole's (via :class:`AlignTrainer`).
"""

import math
from numbers import Real

import torch
import torch.nn.functional as F
from recbole.utils import FeatureType, set_color

from recbole_align.checks import is_number
from recbole_align.distributed import broadcast_from_first, gather_batch, world_size
from recbole_align.errors import AlignError
from recbole_align.model.policy import next_step
from recbole_align.trainer.align_trainer import AlignTrainer

DRPO_VARIANTS = ("adaptive", "fixed", "exp")
STAT_KEYS = ("mean_weight", "ess_share", "drpo_keep_fraction")  # per-epoch statistics, in log order
# config keys the weight functions read; reward_max/reward_min default to the training data's range
SETTING_KEYS = (
    "reward_lambda", "reward_max", "reward_min", "rescale_rewards", "standardize_rewards", "drpo_variant", "drpo_keep_fraction",
    "drpo_threshold", "drpo_tie_margin", "drpo_beta", "reward_scope", "trajectory_length",
)


def exp_weights(rewards, settings):
    """Exp-RSFT (Chidambaram et al. 2026, eq. 11 / Algorithm 1): w = exp((r - r_max) / λ).

    The shift by the FIXED r_max (the training data's maximum rating, or ``reward_max``) keeps every
    weight in (0, 1], so nothing overflows for λ down to 0.01 with ratings up to 5 (exp(5/0.01) is
    inf in float32). It multiplies the paper's unnormalised weights exp(r/λ) by the constant
    exp(-r_max/λ), the same in every batch and epoch: under ``mean`` the loss is the paper's
    Algorithm 1 loss times that constant, so the gradient direction is the paper's and Adam's update
    is unchanged (Adam is invariant to a constant loss scale, up to its eps). A per-batch shift (the
    batch's own max) would rescale each batch differently and change the objective under ``mean``;
    under ``sum`` any shift cancels. Ratings far below r_max underflow to weight 0 at small λ, which
    is their weight relative to r_max to float precision.
    """
    return torch.exp((rewards - settings["reward_max"]) / settings["reward_lambda"])


def linear_weights(rewards, settings):
    """RSFT (Mukherjee et al., the Exp-RSFT paper's Reward-SFT baseline): w = r, the raw rating; with
    ``rescale_rewards`` w = (r - r_min) / (r_max - r_min) in [0, 1]; with ``standardize_rewards``
    w = (r - μ) / σ, μ and σ the mean and (population) standard deviation of the training ratings
    (the standardisation the Exp-RSFT paper ascribes to Mukherjee et al.; below-mean ratings get
    negative weights, which push their items' probability down)."""
    if settings["standardize_rewards"]:
        return (rewards - settings["reward_mean"]) / settings["reward_std"]
    return rescaled(rewards, settings) if settings["rescale_rewards"] else rewards


def uniform_weights(rewards, settings):
    """The "more training" control (ContinuedBC): w = 1 for every position, i.e. the BC loss trained on
    with the post-training settings, the row a reward weighting must beat to matter."""
    return torch.ones_like(rewards)


def rescaled(rewards, settings):
    """(r - r_min) / (r_max - r_min): ratings mapped onto [0, 1] by the training data's range."""
    return (rewards - settings["reward_min"]) / (settings["reward_max"] - settings["reward_min"])


def top_fraction(rewards, fraction):
    """Mask of the top max(1, floor(N * fraction)) of N rewards, across users; equal rewards at the
    cut are kept in random order (so integer-rating ties do not favour early positions)."""
    n_keep = max(1, math.floor(len(rewards) * fraction))
    shuffle = torch.randperm(len(rewards), device=rewards.device)
    order = shuffle[torch.sort(rewards[shuffle], descending=True, stable=True).indices]
    keep = torch.zeros_like(rewards, dtype=torch.bool)
    keep[order[:n_keep]] = True
    return keep


def drpo_weights(rewards, settings):
    """DRPO (Jiang et al. 2026, Appendix G, Algorithm 1): hard filtering of the batch by reward.

    Kept set K: the top P = ``drpo_keep_fraction`` of the positions (``adaptive`` and ``exp``; P is set
    per batch by :class:`KeepFractionController`) or r >= ``drpo_threshold`` (``fixed``). On K:

    * adaptive / fixed: A = r - ν, Ã = A / (std(A) + δ) with ν = min_K(r) - δ, δ = ``drpo_tie_margin``.
      The paper has ν = min_K(r) and a tiny ε; with integer ratings an all-equal kept set (all 5
      stars) then gets A = 0 and no gradient. With the margin (ours) it gets Ã = 1 on every kept
      position, i.e. indicator weights (the paper's Adaptive-BC), and threshold ties keep a small weight.
    * exp (DRPO-Exp): Ã = exp((r~ - mean_K(r~)) / β), β = ``drpo_beta``, r~ = ratings rescaled to [0, 1]
      (β = 0.05 is set for rewards in [0, 1]).

    w = Ã * N / |K| on K and 0 elsewhere, so that the ``mean`` normalisation gives the paper's loss,
    the mean of Ã * (-log pi) over the kept positions.
    """
    variant = settings["drpo_variant"]
    if variant == "fixed":
        keep = rewards >= settings["drpo_threshold"]
    else:
        keep = top_fraction(rewards, settings["drpo_keep_fraction"])
    weights = torch.zeros_like(rewards)
    if not keep.any():
        return weights
    kept = rewards[keep]
    if variant == "exp":
        kept = rescaled(kept, settings)
        advantages = torch.exp((kept - kept.mean()) / settings["drpo_beta"])
    else:
        margin = settings["drpo_tie_margin"]
        advantages = kept - (kept.min() - margin)
        advantages = advantages / (advantages.std(correction=0) + margin)
    weights[keep] = advantages * len(rewards) / len(kept)
    return weights


WEIGHTS = {"exp": exp_weights, "linear": linear_weights, "drpo": drpo_weights, "uniform": uniform_weights}


def window_sums(ratings, mask, length):
    """R(τ_k) = sum_{t in τ_k} r_t over the windows τ_k = positions [kT, (k+1)T) of each left-aligned
    sequence, T = ``length``, counting the ``mask``ed positions only: [B, L] -> (returns [B, K], windows
    [B, K] bool: the windows holding a masked position), K = ceil(L / T). The last window of a
    sequence, its most recent positions, may hold n < T of them: its return is T/n times their sum (T
    times their mean rating), so that it stands with the full windows' T-rating sums instead of being
    ranked low for its length alone (ours: sec. 5's trajectories all have the same length)."""
    pad = -ratings.size(1) % length
    r = F.pad(torch.where(mask, ratings, 0), (0, pad)).unflatten(1, (-1, length))
    counts = F.pad(mask, (0, pad)).unflatten(1, (-1, length)).sum(-1)
    return r.sum(-1) * length / counts.clamp(min=1), counts > 0


def window_returns(ratings, mask, length):
    """Each position's window return R(τ) (:func:`window_sums`): [B, L] -> [B, L], 0 off the mask."""
    returns = window_sums(ratings, mask, length)[0].repeat_interleave(length, dim=1)[:, : ratings.size(1)]
    return torch.where(mask, returns, 0)


def standardised_returns(returns, settings):
    """The standardised return R~(τ) = (R - μ)/σ (paper sec. 5; μ = ``return_mean``, σ = ``return_std``
    over all training windows). As weights, trajectory-level RSFT (ours, for the analogue of the paper's
    Table 6, RSFT on trajectory rewards): w = R~(τ), Mukherjee et al.'s standardised weight of a return."""
    return (returns - settings["return_mean"]) / settings["return_std"]


def trajectory_weights(returns, settings):
    """Trajectory-level Exp-RSFT (paper sec. 5, eq. 19-20): w = exp(R~(τ)/λ) on every position of window
    τ, with the standardised return R~ (:func:`standardised_returns`), computed as exp((R~ - R~_max)/λ):
    the fixed shift by the largest standardised training return keeps w in (0, 1] (as
    :func:`exp_weights` shifts by r_max). Settings: ``return_mean``, ``return_std``, ``return_max``."""
    return exp_weights(standardised_returns(returns, settings),
                       {"reward_lambda": settings["reward_lambda"], "reward_max": settings["return_max"]})


TRAJECTORY_WEIGHTS = {"exp": trajectory_weights, "linear": standardised_returns}  # reward_scope: trajectory


def mean_normalized(losses, weights, batch_weights=None):
    """(1/N) sum w * loss over the N valid positions of the batch (Exp-RSFT Algorithm 1);
    ``batch_weights``: the weights of the whole batch when ``losses``, ``weights`` are one rank's share."""
    return (weights * losses).sum() / len(weights if batch_weights is None else batch_weights)


def sum_normalized(losses, weights, batch_weights=None):
    """sum w * loss / sum w (self-normalised: any constant factor of w cancels); 0 if every w is 0.
    ``batch_weights``: the weights of the whole batch when ``losses``, ``weights`` are one rank's share."""
    total = (weights if batch_weights is None else batch_weights).sum()
    return (weights * losses).sum() / total.clamp_min(torch.finfo(weights.dtype).tiny)


NORMALIZATIONS = {"mean": mean_normalized, "sum": sum_normalized}


def reward_weighted_loss(model, interaction, weighting, settings, normalization):
    """The batch loss of the reward-weighted trainer: (loss, rewards [N], weights [N]) over the N valid
    positions, from ``model.position_losses`` (-log pi per position and the next item's rating). The
    rewards are the ratings, or with ``reward_scope: trajectory`` each position's window return R(τ),
    weighted by :func:`trajectory_weights` (eq. 20: L = (1/N) sum_i exp(R~(τ_i)/λ) (-log pi(a_i | s_i))).

    In a multi-process run the batch is the union of the ranks' batches: the rewards and weights are
    the whole batch's, computed by rank 0 (DRPO's top fraction is the batch's, its random tie-breaking
    rank 0's), and each rank's loss is its share of the batch loss times the number of ranks, so
    that DDP's mean of the ranks' gradients is the gradient of the batch loss.
    """
    losses, mask, ratings = model.position_losses(interaction)
    weight = WEIGHTS[weighting]
    if settings.get("reward_scope") == "trajectory":
        ratings, weight = window_returns(ratings, mask, settings["trajectory_length"]), TRAJECTORY_WEIGHTS[weighting]
    rewards, own = gather_batch(ratings[mask])
    weights = broadcast_from_first(weight(rewards, settings))
    loss = NORMALIZATIONS[normalization](losses[mask], weights[own], weights) * world_size()
    return loss, rewards, weights


class KeepFractionController:
    """DRPO's adaptive kept fraction P (DRPO Appendix G): after each batch,
    P <- min(high, grow * P) if std(r_kept) < std_ratio * std(r_batch), else max(low, shrink * P)."""

    def __init__(self, p0=0.5, low=0.05, high=1.0, grow=1.02, shrink=0.98, std_ratio=0.5):
        self.p, self.low, self.high = p0, low, high
        self.grow, self.shrink, self.std_ratio = grow, shrink, std_ratio

    @classmethod
    def from_config(cls, config):
        """The controller of DRPO.yaml's keys (drpo_keep_fraction, drpo_grow, drpo_shrink, drpo_std_ratio,
        drpo_min_fraction)."""
        return cls(config["drpo_keep_fraction"], config["drpo_min_fraction"], 1.0, config["drpo_grow"],
                   config["drpo_shrink"], config["drpo_std_ratio"])

    def update(self, rewards, keep):
        """Step P from this batch's rewards and kept mask; returns the new P."""
        narrow = rewards[keep].std(correction=0) < self.std_ratio * rewards.std(correction=0)
        self.p = min(self.high, self.grow * self.p) if narrow else max(self.low, self.shrink * self.p)
        return self.p


def _require(ok, message):
    if not ok:
        raise AlignError(message)


def _positive(config, key):
    value = config[key]
    _require(is_number(value) and value > 0, f"{key} must be a number > 0, got {value!r}.")


def check_config(config):
    """Raise AlignError, in one line, for a reward-weighting config that cannot run."""
    weighting = config["reward_weighting"]
    _require(weighting in WEIGHTS, f"reward_weighting must be one of {sorted(WEIGHTS)}, got {weighting!r}.")
    normalization = config["weight_normalization"]
    _require(
        normalization in NORMALIZATIONS,
        f"weight_normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}.",
    )
    if weighting == "exp":
        _positive(config, "reward_lambda")
    signed = weighting == "linear" and (config["standardize_rewards"] or config["reward_scope"] == "trajectory")
    _require(not (signed and normalization == "sum"),
             "weight_normalization: sum divides by the sum of the weights, and standardised weights (R - mean)/std "
             "sum to about 0: use weight_normalization: mean.")
    if config["reward_scope"] == "trajectory":  # its values and trajectory_length's: config.SETTING_CHECKS
        _require(weighting in TRAJECTORY_WEIGHTS,
                 f"reward_scope=trajectory is Exp-RSFT's and RSFT's (reward_weighting: exp or linear), not {weighting!r}'s.")
        _require(not (weighting == "linear" and config["rescale_rewards"]),
                 "RSFT with reward_scope=trajectory weights by the standardised return R~: rescale_rewards does not apply.")
        _require(
            config["reward_max"] is None,
            "reward_max shifts ratings (reward_scope=item); trajectory weights shift by the largest "
            "standardised training return: leave reward_max: ~.",
        )
    if weighting == "drpo":
        variant = config["drpo_variant"]
        _require(variant in DRPO_VARIANTS, f"drpo_variant must be one of {list(DRPO_VARIANTS)}, got {variant!r}.")
        _positive(config, "drpo_tie_margin")
        p0 = config["drpo_keep_fraction"]
        _require(
            isinstance(p0, Real) and 0 < p0 <= 1, f"drpo_keep_fraction must be in (0, 1], got {p0!r}."
        )
        if variant != "fixed":  # the controller's steps
            grow, shrink, low = config["drpo_grow"], config["drpo_shrink"], config["drpo_min_fraction"]
            _require(is_number(grow) and grow >= 1, f"drpo_grow must be a number >= 1, got {grow!r}.")
            _require(is_number(shrink) and 0 < shrink <= 1, f"drpo_shrink must be in (0, 1], got {shrink!r}.")
            _positive(config, "drpo_std_ratio")
            _require(is_number(low) and 0 < low <= p0,
                     f"drpo_min_fraction must be in (0, drpo_keep_fraction={p0}], got {low!r}.")
        if variant == "fixed":
            threshold = config["drpo_threshold"]
            _require(
                isinstance(threshold, Real), f"drpo_variant=fixed needs a numeric drpo_threshold, got {threshold!r}."
            )
        if variant == "exp":
            _positive(config, "drpo_beta")


def training_ratings(dataset, config):
    """Every rating of the training sequences (targets and histories), checked to be usable rewards."""
    field = config["RATING_FIELD"]
    _require(
        field is not None and field in dataset.inter_feat,
        f"[{config['model']}] weights positions by rating, but dataset [{config['dataset']}] has no rating "
        f"field [{field}] loaded (check RATING_FIELD, load_col and the .inter header).",
    )
    _require(
        dataset.field2type[field] == FeatureType.FLOAT,
        f"rating field [{field}] of [{config['dataset']}] is {dataset.field2type[field].value}, not numeric: "
        f"declare it as {field}:float in the .inter header.",
    )
    inter = dataset.inter_feat
    history = inter[f"{field}{config['LIST_SUFFIX']}"]
    lengths = inter[config["ITEM_LIST_LENGTH_FIELD"]]
    valid = torch.arange(history.size(1)) < lengths.unsqueeze(1)
    ratings = torch.cat([inter[field], history[valid]]).double()
    missing = getattr(dataset, "missing_ratings", 0) + int(torch.isnan(ratings).sum())
    _require(
        missing == 0,
        f"[{config['dataset']}] has {missing} interactions without a numeric {field} (empty or NaN); "
        f"[{config['model']}] needs a rating on every interaction.",
    )
    return ratings


def training_returns(dataset, config):
    """R(τ) of every training window of ``trajectory_length`` positions (:func:`window_sums`), one
    value per window: [W] float64. A training sequence's positions are its history's, each rated by the
    item it predicts (the next history item, then the target)."""
    inter, field = dataset.inter_feat, config["RATING_FIELD"]
    lengths = inter[config["ITEM_LIST_LENGTH_FIELD"]]
    ratings = next_step(inter[f"{field}{config['LIST_SUFFIX']}"].double(), lengths, inter[field])
    mask = torch.arange(ratings.size(1)) < lengths.unsqueeze(1)
    returns, windows = window_sums(ratings, mask, config["trajectory_length"])
    return returns[windows]


def return_statistics(returns):
    """``return_mean`` μ and ``return_std`` σ (population) of the training windows' returns R, and
    ``return_max`` (max R - μ)/σ, the largest standardised return; AlignError if σ = 0."""
    std, mean = torch.std_mean(returns, correction=0)
    _require(
        std > 0,
        f"all {len(returns)} training windows have the same return {mean.item():g}: the standardised return "
        f"(R - mean)/std is undefined; use reward_scope: item or another trajectory_length.",
    )
    return {"return_mean": mean.item(), "return_std": std.item(), "return_max": ((returns.max() - mean) / std).item()}


def resolve_settings(config, ratings):
    """The weight functions' settings: config values, with reward_max/reward_min from the data when
    unset; raise AlignError for settings the ratings make meaningless."""
    settings = {key: config[key] for key in SETTING_KEYS}
    settings["reward_scope"] = settings["reward_scope"] or "item"  # RSFT and DRPO leave it unset
    r_min, r_max = ratings.min().item(), ratings.max().item()
    std, mean = torch.std_mean(ratings, correction=0)
    settings["reward_mean"], settings["reward_std"] = mean.item(), std.item()
    settings["reward_max"] = r_max if settings["reward_max"] is None else settings["reward_max"]
    settings["reward_min"] = r_min if settings["reward_min"] is None else settings["reward_min"]
    weighting, variant = config["reward_weighting"], settings["drpo_variant"]
    if weighting == "exp":
        _require(
            settings["reward_max"] >= r_max,
            f"reward_max={settings['reward_max']:g} is below the highest training rating ({r_max:g}): "
            f"exp((r - reward_max)/λ) could overflow; leave reward_max: ~ to use the data's maximum.",
        )
    if (weighting == "linear" and settings["rescale_rewards"]) or (weighting == "drpo" and variant == "exp"):
        _require(
            settings["reward_max"] > settings["reward_min"],
            f"cannot rescale ratings to [0, 1]: reward_min = reward_max = {settings['reward_max']:g}.",
        )
    if weighting == "linear" and settings["standardize_rewards"]:
        _require(not settings["rescale_rewards"], "RSFT takes rescale_rewards or standardize_rewards, not both.")
        _require(settings["reward_std"] > 0, f"cannot standardise ratings: every training rating is {r_max:g}.")
    elif weighting == "linear" and not settings["rescale_rewards"]:
        _require(r_min >= 0, f"RSFT weights w = r need ratings >= 0 (min {r_min:g}); set rescale_rewards: True.")
    if weighting == "drpo" and variant == "fixed":
        _require(
            settings["drpo_threshold"] <= r_max,
            f"drpo_threshold={settings['drpo_threshold']:g} is above every training rating (max {r_max:g}): "
            f"DRPO would keep nothing.",
        )
    return settings


class RewardWeightedTrainer(AlignTrainer):
    """Post-trains a model with ``position_losses`` by the reward-weighted loss of this module.

    Config keys (defaults in recbole_align/properties/model/{ExpRSFT,RSFT,DRPO}.yaml): ``reward_weighting``
    (exp | linear | drpo), ``weight_normalization`` (mean | sum), the keys of the weight functions and,
    for Exp-RSFT, ``reward_scope`` (item | trajectory) and ``trajectory_length``.
    Each epoch adds to ``epoch_log`` and to the training log line: ``mean_weight`` (mean w over the
    epoch's positions), ``ess_share`` (effective sample size (sum w)^2 / sum w^2 as a share of the
    positions) and, for DRPO, ``drpo_keep_fraction`` (share of positions kept). DRPO's adaptive P
    is part of the resume state.
    """

    check_config = staticmethod(check_config)  # config.build_config calls it, before any data is read

    def __init__(self, config, model):
        _require(
            config["reward_scope"] != "trajectory" or model.all_position_training,
            f"reward_scope=trajectory needs a backbone trained at every position of one sequence per user "
            f"(HSTU, SASRec, GRU4Rec), not [{config['backbone']}].",
        )
        super().__init__(config, model)
        self.weighting = config["reward_weighting"]
        self.normalization = config["weight_normalization"]
        self.settings = None  # resolved from the training data in fit()
        adaptive = self.weighting == "drpo" and config["drpo_variant"] != "fixed"
        self.controller = KeepFractionController.from_config(config) if adaptive else None
        self._totals = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        ratings = training_ratings(train_data._dataset, self.config)
        self.settings = resolve_settings(self.config, ratings)
        if self.settings["reward_scope"] == "trajectory":
            returns = training_returns(train_data._dataset, self.config)
            self.settings.update(return_statistics(returns))
            self.logger.info(
                f"trajectory returns over {len(returns)} training windows of {self.settings['trajectory_length']} "
                f"positions: mean {self.settings['return_mean']:.4f}, std {self.settings['return_std']:.4f}"
            )
        if self.controller is not None:  # P0, or the P a resumed run had reached
            self.settings["drpo_keep_fraction"] = self.controller.p
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def resume_state(self, rng):
        state = super().resume_state(rng)
        state["drpo_keep_fraction"] = self.controller.p if self.controller is not None else None
        return state

    def load_resume_state(self, state):
        super().load_resume_state(state)
        if self.controller is not None:
            self.controller.p = state["drpo_keep_fraction"]

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        losses = super()._train_epoch(train_data, epoch_idx, loss_func or self.weighted_loss, show_progress)
        self.epoch_log[-1].update(self.epoch_stats())
        return losses

    def weighted_loss(self, interaction):
        """The loss function handed to RecBole's training loop; also gathers the epoch's statistics."""
        loss, rewards, weights = reward_weighted_loss(
            self.model, interaction, self.weighting, self.settings, self.normalization
        )
        with torch.no_grad():
            w = weights.double()
            self._totals += torch.stack([w.sum(), (w * w).sum(), w.new_tensor(len(w)), (w > 0).sum()])
        if self.controller is not None:
            self.settings["drpo_keep_fraction"] = self.controller.update(rewards, weights > 0)
        return loss

    def epoch_stats(self):
        """mean_weight, ess_share and (DRPO) drpo_keep_fraction of the positions trained this epoch."""
        w_sum, w_sq, n, kept = self._totals.tolist()
        stats = {"mean_weight": w_sum / n, "ess_share": w_sum**2 / w_sq / n if w_sq > 0 else 0.0}
        if self.weighting == "drpo":
            stats["drpo_keep_fraction"] = kept / n
        return stats

    def _last_stats(self):
        return {key: self.epoch_log[-1][key] for key in STAT_KEYS if key in self.epoch_log[-1]}

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        """RecBole's line "epoch N training [time: .., train loss: ..]" with this epoch's statistics."""
        line = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        stats = ", ".join(f"{set_color(key, 'blue')}: {value:.4f}" for key, value in self._last_stats().items())
        return f"{line[:-1]}, {stats}]"

    def _add_train_loss_to_tensorboard(self, epoch_idx, losses, tag="Loss/Train"):
        super()._add_train_loss_to_tensorboard(epoch_idx, losses, tag)
        for key, value in self._last_stats().items():
            self.tensorboard.add_scalar(f"Train/{key}", value, epoch_idx)
