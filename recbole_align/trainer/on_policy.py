"""What PPO and online DPO share: the policy over the catalogue with the history left out, sampling
from it, the exact KL between two such policies, and a trainer base that holds the frozen BC model
(the KL anchor π_BC, whose reward head is the reward model r̂)."""

import copy
from collections import namedtuple

import torch

from recbole_align.errors import AlignError
from recbole_align.trainer.align_trainer import AlignTrainer

Contexts = namedtuple("Contexts", "log_policy log_reference reference_states excluded")


def history_mask(item_seq, rows, positions, n_items):
    """excluded[m, a] = (a = 0, padding) or a ∈ item_seq[rows[m], : positions[m] + 1]: [M, n_items] bool.

    The items that the context at position t of a history has already seen, which it must not be
    recommended again (as the evaluation excludes them).
    """
    length = item_seq.size(1)
    index = torch.arange(length, dtype=torch.int32, device=item_seq.device).expand_as(item_seq)
    first_seen = torch.full((item_seq.size(0), n_items), length, dtype=torch.int32, device=item_seq.device)
    first_seen = first_seen.scatter_reduce(1, item_seq, index, reduce="amin")
    excluded = first_seen[rows] <= positions.unsqueeze(1)
    excluded[:, 0] = True
    return excluded


def log_policy(model, states, excluded, temperature=1.0):
    """log π(a|s) = log softmax_{a not excluded}(logit(s, a) / temperature): [M, n_items], -inf where excluded."""
    logits = model.catalogue_logits(states).masked_fill(excluded, float("-inf"))
    return torch.log_softmax(logits / temperature, dim=-1)


def sample_items(log_probs, num_samples, temperature=1.0, replacement=True, generator=None):
    """num_samples items per row drawn from softmax(log_probs / temperature): [M, num_samples]."""
    probs = torch.softmax(log_probs / temperature, dim=-1)
    return torch.multinomial(probs, num_samples, replacement=replacement, generator=generator)


def exact_kl(log_p, log_q):
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) per row, over the support of p (log p = -inf off it)."""
    support = torch.isfinite(log_p)
    return (log_p.exp() * torch.where(support, log_p - log_q, 0.0)).sum(-1)


def frozen_copy(model):
    """A copy of ``model`` in eval mode with no gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class OnPolicyTrainer(AlignTrainer):
    """Base of PPO and online DPO: a loss on items sampled from the policy itself, at every valid
    position of each training batch (the contexts BC trains on; ours).

    ``self.reference`` is the frozen BC model (a copy of the model as loaded from the BC checkpoint,
    so the run must load the pretrained weights before building the trainer): π_BC for the KL or
    the DPO reference, and r̂(s, a) = its reward head on its own state. The policy's own reward head
    is frozen too. Subclasses define ``batch_loss(interaction)`` and append per-batch statistics to
    ``self.batch_stats``; their epoch means go into ``epoch_log``.
    """

    requires_reward_head = True  # the BC stage trains a reward head for this trainer

    def __init__(self, config, model):
        if getattr(model, "reward_head", None) is None:
            raise AlignError(
                f"{config['model']} needs a reward head, but the BC checkpoint "
                f"[{config['pretrained_checkpoint']}] has none: train BC with --reward_head=True, "
                f"or leave pretrained_checkpoint unset."
            )
        model.reward_head.requires_grad_(False)  # before DDP (in super().__init__) lists the parameters to reduce
        super().__init__(config, model)
        self.reference = frozen_copy(model)
        self.sampling_temperature = config["sampling_temperature"]
        self.batch_stats = []

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.batch_stats = []
        losses = super()._train_epoch(train_data, epoch_idx, self.batch_loss, show_progress)
        if self.batch_stats:
            stats = self.batch_stats
            self.epoch_log[-1].update({k: sum(float(s[k]) for s in stats) / len(stats) for k in stats[0]})
        return losses

    def contexts(self, interaction, temperature=1.0):
        """At every valid position m of the batch: log π_θ(·|s_m) (with gradient) and log π_BC(·|s_m)
        at ``temperature``, the BC states (for r̂) and the excluded history items."""
        states, _, mask = self.model.position_states(interaction)
        rows, positions = mask.nonzero(as_tuple=True)
        excluded = history_mask(interaction[self.model.ITEM_SEQ], rows, positions, self.model.n_items)
        with torch.no_grad():
            reference_states = self.reference.position_states(interaction)[0]
            log_reference = log_policy(self.reference, reference_states, excluded, temperature)
        log_pi = log_policy(self.model, states, excluded, temperature)
        return Contexts(log_pi, log_reference, reference_states, excluded)

    @torch.no_grad()
    def reward(self, reference_states, items):
        """r̂(s_m, a_mk) of the frozen reward model: states [M, d], items [M, K] -> [M, K]."""
        return self.reference.predict_reward(reference_states.unsqueeze(1), items)
