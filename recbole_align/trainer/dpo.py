"""Online DPO: the Exp-RSFT paper's DPO baseline (sec. 6), after OneRec (Deng et al., 2025).

Recommendation logs hold no pairwise preferences, so for each context (every valid position of a
batch) two distinct items are sampled from the current policy over the catalogue minus the history;
the one the frozen reward head scores higher is preferred, and the policy takes the DPO loss
(Rafailov et al., 2023) against the frozen BC policy. Pairs the head scores equal carry no
preference and are left out. Hyper-parameters: recbole_align/properties/model/DPO.yaml.
"""

import torch
import torch.nn.functional as F

from recbole_align.trainer.on_policy import OnPolicyTrainer, items_of, policy_kl, sample_pairs


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """Per-pair DPO loss -log sigmoid(beta [(log pi_theta(a_w|s) - log pi_ref(a_w|s))
    - (log pi_theta(a_l|s) - log pi_ref(a_l|s))]); every argument is a tensor [M] of log-probabilities,
    or of logits: both items of a pair share the context s, so its log-normaliser cancels in the margin."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


def rank_pairs(pairs, rewards):
    """(chosen [M, 1], rejected [M, 1], decided [M]) for item pairs [M, 2] scored rewards [M, 2]: the
    chosen item is the one with the higher reward; decided is 0 where the two rewards tie."""
    ranked = pairs.gather(1, rewards.argsort(dim=1, descending=True))
    return ranked[:, :1], ranked[:, 1:], (rewards[:, 0] != rewards[:, 1]).float()


class DPOTrainer(OnPolicyTrainer):
    """Online DPO on pairs sampled from the policy and ranked by the reward head.

    The loss needs the logits of the two items of each pair only (the log-normalisers cancel), so
    the gradient flows through 2 M dot products; the catalogue-wide policy is computed without
    gradient, to sample, in blocks of rows (``catalogue_chunk_mb``), over the catalogue or the batch's support
    (``policy_estimator``). The logged KL to BC (exact, or estimated over the support) is taken on
    ``kl_log_contexts`` contexts of each batch spread evenly over it (ours: logging only).
    """

    kl_log_contexts = 512

    def __init__(self, config, model):
        super().__init__(config, model)
        self.beta = config["dpo_beta"]

    def batch_loss(self, interaction):
        """Mean dpo_loss over the contexts whose two sampled items the reward head does not tie."""
        states, reference_states, history, support = self.contexts(interaction)
        with torch.no_grad():
            pairs = items_of(sample_pairs(self.model, states, history, self.sampling_temperature, support), support)
            rewards = self.reward(reference_states, pairs)
            chosen, rejected, decided = rank_pairs(pairs, rewards)
            reference_chosen, reference_rejected = (
                self.reference.item_logits(reference_states, items).squeeze(1) for items in (chosen, rejected)
            )
            logged = torch.linspace(0, len(states) - 1, min(len(states), self.kl_log_contexts)).long()
            kl = policy_kl(self.model, self.reference, states[logged], reference_states[logged], history[logged],
                           support).mean()
        losses = dpo_loss(
            self.model.item_logits(states, chosen).squeeze(1), self.model.item_logits(states, rejected).squeeze(1),
            reference_chosen, reference_rejected, self.beta,
        )
        self.batch_stats.append({
            "sample_reward": rewards.mean(), "decided_fraction": decided.mean(), "kl_to_bc": kl,
        })
        return (losses * decided).sum() / decided.sum().clamp(min=1)
