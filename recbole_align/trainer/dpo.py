"""Online DPO: the Exp-RSFT paper's DPO baseline (sec. 6), after OneRec (Deng et al., 2025).

Recommendation logs hold no pairwise preferences, so for each context (every valid position of a
batch) two distinct items are sampled from the current policy over the catalogue minus the history;
the one the frozen reward head scores higher is preferred, and the policy takes the DPO loss
(Rafailov et al., 2023) against the frozen BC policy. Pairs the head scores equal carry no
preference and are left out. Hyper-parameters: properties/model/DPO.yaml.
"""

import torch
import torch.nn.functional as F

from recbole_align.trainer.on_policy import OnPolicyTrainer, exact_kl, sample_items


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """Per-pair DPO loss -log sigmoid(beta [(log pi_theta(a_w|s) - log pi_ref(a_w|s))
    - (log pi_theta(a_l|s) - log pi_ref(a_l|s))]); every argument is a tensor of log-probabilities [M]."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


def rank_pairs(pairs, rewards):
    """(chosen [M, 1], rejected [M, 1], decided [M]) for item pairs [M, 2] scored rewards [M, 2]: the
    chosen item is the one with the higher reward; decided is 0 where the two rewards tie."""
    ranked = pairs.gather(1, rewards.argsort(dim=1, descending=True))
    return ranked[:, :1], ranked[:, 1:], (rewards[:, 0] != rewards[:, 1]).float()


class DPOTrainer(OnPolicyTrainer):
    """Online DPO on pairs sampled from the policy and ranked by the reward head."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.beta = config["dpo_beta"]

    def batch_loss(self, interaction):
        """Mean dpo_loss over the contexts whose two sampled items the reward head does not tie."""
        contexts = self.contexts(interaction)
        log_pi, log_ref = contexts.log_policy, contexts.log_reference
        with torch.no_grad():
            pairs = sample_items(log_pi, 2, self.sampling_temperature, replacement=False)
            rewards = self.reward(contexts.reference_states, pairs)
        chosen, rejected, decided = rank_pairs(pairs, rewards)
        losses = dpo_loss(
            log_pi.gather(1, chosen), log_pi.gather(1, rejected),
            log_ref.gather(1, chosen), log_ref.gather(1, rejected), self.beta,
        ).squeeze(1)
        self.batch_stats.append({
            "sample_reward": rewards.mean(),
            "decided_fraction": decided.mean(),
            "kl_to_bc": exact_kl(log_pi.detach(), log_ref).mean(),
        })
        return (losses * decided).sum() / decided.sum().clamp(min=1)
