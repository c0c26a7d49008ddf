"""PPO (Schulman et al., 2017) as one-step bandit RLHF: the Exp-RSFT paper's PPO baseline (sec. 6).

Each context (every valid position of a batch) is a one-step episode: K items are sampled from the
rollout policy π_old over the catalogue minus the history, scored by the frozen reward head, and the
policy maximises the clipped surrogate with group-mean advantages, minus an exact KL penalty to the
frozen BC policy. No critic. π_old is the policy at the start of each epoch, so each epoch is one
rollout consumed in one pass of minibatches (ours). Hyper-parameters: properties/model/PPO.yaml.
"""

import torch

from recbole_align.trainer.on_policy import OnPolicyTrainer, frozen_copy, log_probs_and_kl, sample_with_log_probs


def ppo_loss(log_policy, log_old, kl, rewards, clip_epsilon, kl_coef):
    """Clipped one-step PPO loss with an exact KL penalty, over M contexts with K sampled items each.

    A_mk = r_mk - (1/K) sum_k' r_mk'                                     (group-mean baseline)
    rho_mk = pi_theta(a_mk|s_m) / pi_old(a_mk|s_m)
    L_clip = (1/MK) sum_mk min(rho_mk A_mk, clip(rho_mk, 1 - eps, 1 + eps) A_mk)
    KL = (1/M) sum_m sum_a pi_theta(a|s_m) (log pi_theta(a|s_m) - log pi_ref(a|s_m))
    loss = -L_clip + kl_coef * KL

    log_policy, log_old, rewards: [M, K], log pi_theta and log pi_old at the sampled items a_mk and
    their rewards; kl: [M], the exact KL of each context (:func:`log_probs_and_kl`).
    Returns (loss, {"clip_objective", "kl_to_bc", "clip_fraction"}), the statistics detached.
    """
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    ratio = torch.exp(log_policy - log_old)
    clipped_ratio = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
    clip_objective = torch.min(ratio * advantages, clipped_ratio * advantages).mean()
    kl = kl.mean()
    stats = {
        "clip_objective": clip_objective.detach(),
        "kl_to_bc": kl.detach(),
        "clip_fraction": (ratio != clipped_ratio).float().mean(),
    }
    return -clip_objective + kl_coef * kl, stats


class PPOTrainer(OnPolicyTrainer):
    """One-step PPO against the reward head, anchored to the BC policy by an exact KL penalty."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.num_samples = config["num_samples"]
        self.clip_epsilon = config["clip_epsilon"]
        self.kl_coef = config["kl_coef"]
        self.rollout_policy = None

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.rollout_policy = frozen_copy(self.model)  # pi_old for this epoch's rollouts
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)

    def batch_loss(self, interaction):
        """ppo_loss on K items per context sampled from pi_old at ``sampling_temperature`` (the ratio
        and the KL are taken on the same tempered policies)."""
        temperature = self.sampling_temperature
        states, reference_states, excluded = self.contexts(interaction)
        with torch.no_grad():
            old_states = self.rollout_policy.position_states(interaction)[0]
            actions, log_old = sample_with_log_probs(self.rollout_policy, old_states, excluded, self.num_samples, temperature)
            rewards = self.reward(reference_states, actions)
        log_pi, kl = log_probs_and_kl(self.model, states, self.reference, reference_states, excluded, actions, temperature)
        loss, stats = ppo_loss(log_pi, log_old, kl, rewards, self.clip_epsilon, self.kl_coef)
        self.batch_stats.append({"sample_reward": rewards.mean(), **stats})
        return loss
