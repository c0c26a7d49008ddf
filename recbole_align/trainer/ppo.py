"""PPO (Schulman et al., 2017) as one-step bandit RLHF: the Exp-RSFT paper's PPO baseline (sec. 6).

Each context (every valid position of a batch) is a one-step episode. Standard PPO, per training
batch: a rollout of K items per context is sampled from the current policy (π_old = the policy at
that moment, no gradient) over the catalogue minus the history and scored by the frozen reward head;
then ``ppo_epochs`` clipped passes (optimizer steps) over that rollout maximise the clipped surrogate
with group-mean advantages, minus an exact KL penalty to the frozen BC policy; then the next batch.
With ``policy_estimator: sampled`` the rollout, log π and the KL are taken over the batch's support of
candidate items (recbole_align.trainer.on_policy), kept for every pass over the rollout.
No critic. Hyper-parameters: recbole_align/properties/model/PPO.yaml.
"""

from collections import namedtuple

import torch

from recbole_align.trainer.on_policy import (
    OnPolicyTrainer, items_of, log_normaliser, log_probs_and_kl, sample_with_log_probs,
)

# reference_log_norm: pi_BC's log-normaliser at each context (fixed during the rollout's passes); support:
# the batch's candidate items (on_policy.Support; actions are its slots), None over the whole catalogue;
# log_reference: log pi_BC at the sampled items, for a KL estimated on them (GRPO's k3); None for PPO
Rollout = namedtuple(
    "Rollout", "reference_states history actions log_old rewards reference_log_norm support log_reference",
    defaults=(None, None),
)


def clipped_surrogate(log_policy, log_old, advantages, clip_epsilon):
    """(L_clip, clip fraction) of M contexts with K sampled items each, all [M, K]:

    rho_mk = pi_theta(a_mk|s_m) / pi_old(a_mk|s_m)
    L_clip = (1/MK) sum_mk min(rho_mk A_mk, clip(rho_mk, 1 - eps, 1 + eps) A_mk)
    clip fraction = the share of the a_mk whose ratio is clipped (detached).
    """
    ratio = torch.exp(log_policy - log_old)
    clipped_ratio = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
    clip_objective = torch.min(ratio * advantages, clipped_ratio * advantages).mean()
    return clip_objective, (ratio != clipped_ratio).float().mean()


def ppo_loss(log_policy, log_old, kl, rewards, clip_epsilon, kl_coef):
    """Clipped one-step PPO loss with an exact KL penalty, over M contexts with K sampled items each.

    A_mk = r_mk - (1/K) sum_k' r_mk'                                     (group-mean baseline)
    L_clip = (1/MK) sum_mk min(rho_mk A_mk, clip(rho_mk, 1 - eps, 1 + eps) A_mk)   (:func:`clipped_surrogate`)
    KL = (1/M) sum_m sum_a pi_theta(a|s_m) (log pi_theta(a|s_m) - log pi_ref(a|s_m))
    loss = -L_clip + kl_coef * KL

    log_policy, log_old, rewards: [M, K], log pi_theta and log pi_old at the sampled items a_mk and
    their rewards; kl: [M], the exact KL of each context (:func:`log_probs_and_kl`).
    Returns (loss, {"clip_objective", "kl_to_bc", "clip_fraction"}), the statistics detached.
    """
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    clip_objective, clip_fraction = clipped_surrogate(log_policy, log_old, advantages, clip_epsilon)
    kl = kl.mean()
    stats = {"clip_objective": clip_objective.detach(), "kl_to_bc": kl.detach(), "clip_fraction": clip_fraction}
    return -clip_objective + kl_coef * kl, stats


class RepeatedBatches:
    """A train loader whose every batch comes ``repeats`` times in a row (PPO's passes over one
    rollout, each an optimizer step of RecBole's training loop); anything else is the loader's."""

    def __init__(self, loader, repeats):
        self.loader, self.repeats = loader, repeats

    def __iter__(self):
        for batch in self.loader:
            for _ in range(self.repeats):
                yield batch

    def __len__(self):
        return len(self.loader) * self.repeats

    def __getattr__(self, name):
        return getattr(self.loader, name)


class PPOTrainer(OnPolicyTrainer):
    """Standard one-step PPO against the reward head, anchored to the BC policy by an exact KL penalty.

    A pass samples its rollout with :meth:`sample_rollout` and scores it with :meth:`rollout_loss`,
    the two steps that GRPO (:mod:`recbole_align.trainer.grpo`) changes.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.num_samples = config["num_samples"]
        self.clip_epsilon = config["clip_epsilon"]
        self.kl_coef = config["kl_coef"]
        self.ppo_epochs = config["ppo_epochs"]  # checked in config.SETTING_CHECKS, with num_samples, kl_coef ...
        self.rollout, self.passes_done = None, 0

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.passes_done = 0
        return super()._train_epoch(RepeatedBatches(train_data, self.ppo_epochs), epoch_idx, loss_func, show_progress)

    def batch_loss(self, interaction):
        """The loss of one pass over the batch's rollout; the first pass samples it from the policy's
        own states (so its ratio is 1) at ``sampling_temperature`` (the ratio and the KL are taken on
        the same tempered policies)."""
        if self.passes_done % self.ppo_epochs == 0:
            states, reference_states, history, support = self.contexts(interaction)
            self.rollout = self.sample_rollout(states.detach(), reference_states, history, support)
        else:
            states = self.model.position_states(interaction)[0]
        self.passes_done += 1
        rollout = self.rollout
        log_pi, kl = log_probs_and_kl(
            self.model, states, self.reference, rollout.reference_states, rollout.history, rollout.actions,
            self.sampling_temperature, rollout.reference_log_norm, rollout.support,
        )
        loss, stats = self.rollout_loss(log_pi, kl, rollout)
        self.batch_stats.append({"sample_reward": rollout.rewards.mean(), **stats})
        return loss

    def sample_rollout(self, states, reference_states, history, support=None):
        """num_samples items per context from pi_old (the policy now, no gradient; over ``support``, if any),
        with their rewards, and pi_BC's log-normalisers, which every pass over the rollout reuses."""
        temperature = self.sampling_temperature
        actions, log_old = sample_with_log_probs(self.model, states, history, self.num_samples, temperature, support)
        reference_log_norm = log_normaliser(self.reference, reference_states, history, temperature, support)
        rewards = self.reward(reference_states, items_of(actions, support))
        return Rollout(reference_states, history, actions, log_old, rewards, reference_log_norm, support)

    def rollout_loss(self, log_pi, kl, rollout):
        """(loss, stats) of one pass: :func:`ppo_loss` at log pi_theta of the rollout's items and the exact KL."""
        return ppo_loss(log_pi, rollout.log_old, kl, rollout.rewards, self.clip_epsilon, self.kl_coef)
