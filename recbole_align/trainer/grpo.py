"""GRPO (Shao et al., 2024, DeepSeekMath) as one-step bandit RLHF.

PPO's rollouts and passes (:class:`~recbole_align.trainer.ppo.PPOTrainer`: per training batch a
group of G items per context sampled from the current policy π_old and scored by the frozen reward
head, then ``ppo_epochs`` clipped passes over it), with GRPO's two changes: the advantages are the
rewards standardised within each group, and the KL to the frozen BC policy is a penalty estimated on
the sampled items (``grpo_kl: k3``, the paper's) or the exact catalogue KL (``grpo_kl: exact``, PPO's).
No critic. Hyper-parameters: recbole_align/properties/model/GRPO.yaml.
"""


import torch

from recbole_align.checks import is_number
from recbole_align.errors import AlignError
from recbole_align.trainer.on_policy import log_probs_at
from recbole_align.trainer.ppo import PPOTrainer, clipped_surrogate

KL_ESTIMATORS = ("k3", "exact")


def group_advantages(rewards, eps):
    """A_mk = (r_mk - mean_k r_mk) / (std_k r_mk + eps) per group (row) of rewards [M, G], with the
    population std (TRL's GRPO takes the sample std: its A is this one times sqrt((G - 1) / G));
    A = 0 where a group's rewards are all equal."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, correction=0, keepdim=True) + eps)


def k3_kl(log_policy, log_reference):
    """k3_mk = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 at the sampled items [M, G], >= 0: the GRPO
    paper's estimator of KL(pi_theta || pi_ref), unbiased on items drawn from pi_theta."""
    log_ratio = log_reference - log_policy
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(log_policy, log_old, kl, rewards, clip_epsilon, kl_coef, advantage_eps, log_reference=None):
    """Clipped one-step GRPO loss with a KL penalty, over M contexts with a group of G sampled items each.

    A_mk = (r_mk - mean_G(r_m)) / (std_G(r_m) + advantage_eps)               (:func:`group_advantages`)
    rho_mk = pi_theta(a_mk|s_m) / pi_old(a_mk|s_m)
    L_clip = (1/MG) sum_mk min(rho_mk A_mk, clip(rho_mk, 1 - eps, 1 + eps) A_mk)   (:func:`clipped_surrogate`)
    KL_exact = (1/M) sum_m sum_a pi_theta(a|s_m) (log pi_theta(a|s_m) - log pi_ref(a|s_m))
    KL_k3 = (1/MG) sum_mk [pi_ref(a_mk|s_m) / pi_theta(a_mk|s_m) - log(pi_ref / pi_theta) - 1]   (:func:`k3_kl`)
    loss = -L_clip + kl_coef * (KL_k3 if log_reference is given, else KL_exact)

    log_policy, log_old, rewards: [M, G], log pi_theta and log pi_old at the sampled items a_mk and
    their rewards; kl: [M], the exact KL of each context (:func:`log_probs_and_kl`); log_reference:
    [M, G], log pi_ref at the sampled items, or None for the exact penalty.
    Returns (loss, {"clip_objective", "kl_to_bc", "clip_fraction"} and, with log_reference, "kl_k3"),
    the statistics detached; kl_to_bc is KL_exact in both cases, as PPO logs it.
    """
    advantages = group_advantages(rewards, advantage_eps)
    clip_objective, clip_fraction = clipped_surrogate(log_policy, log_old, advantages, clip_epsilon)
    kl_to_bc = kl.mean()
    stats = {"clip_objective": clip_objective.detach(), "kl_to_bc": kl_to_bc.detach(), "clip_fraction": clip_fraction}
    if log_reference is None:
        return -clip_objective + kl_coef * kl_to_bc, stats
    kl_k3 = k3_kl(log_policy, log_reference).mean()
    stats["kl_k3"] = kl_k3.detach()
    return -clip_objective + kl_coef * kl_k3, stats


def check_grpo_settings(config):
    """Raise AlignError, in one line, for a grpo_kl or advantage_eps that cannot run (num_samples, the
    group size: config.SETTING_CHECKS)."""
    if config["grpo_kl"] not in KL_ESTIMATORS:
        raise AlignError(f"grpo_kl must be one of {list(KL_ESTIMATORS)}, got {config['grpo_kl']!r}.")
    eps = config["advantage_eps"]
    if not is_number(eps) or eps <= 0:
        raise AlignError(f"advantage_eps must be a number > 0 (it keeps the advantages finite), got {eps!r}.")


class GRPOTrainer(PPOTrainer):
    """PPO's rollouts and passes with group-standardised advantages and the ``grpo_kl`` penalty."""

    check_config = staticmethod(check_grpo_settings)  # config.build_config calls it, before any data is read

    def __init__(self, config, model):
        super().__init__(config, model)
        self.kl_estimator = config["grpo_kl"]
        self.advantage_eps = config["advantage_eps"]

    def sample_rollout(self, states, reference_states, history, support=None):
        """PPO's rollout and, for the k3 penalty, log pi_BC at its items (at the sampling temperature)."""
        rollout = super().sample_rollout(states, reference_states, history, support)
        if self.kl_estimator == "exact":
            return rollout
        log_reference = log_probs_at(
            self.reference, reference_states, history, rollout.actions, self.sampling_temperature, support
        )
        return rollout._replace(log_reference=log_reference)

    def rollout_loss(self, log_pi, kl, rollout):
        """(loss, stats) of one pass: :func:`grpo_loss` on the rollout."""
        return grpo_loss(
            log_pi, rollout.log_old, kl, rollout.rewards, self.clip_epsilon, self.kl_coef, self.advantage_eps,
            rollout.log_reference,
        )
