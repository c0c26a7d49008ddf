"""What PPO, GRPO and online DPO share: the policy over the catalogue with the history left out, sampling
from it, the exact KL between two such policies, and a trainer base that holds the frozen BC model
(the KL anchor π_BC, whose reward head is the reward model r̂)."""

import copy
from collections import namedtuple

import torch

from recbole_align.errors import AlignError
from recbole_align.trainer.align_trainer import AlignTrainer

Contexts = namedtuple("Contexts", "states reference_states excluded")


def history_mask(item_seq, rows, positions, n_items):
    """excluded[m, a] = (a = 0, padding) or a ∈ item_seq[rows[m], : positions[m] + 1]: [M, n_items] bool.

    The items that the context at position t of a history has already seen, which it must not be
    recommended again (as the evaluation excludes them): scattered from the [M, window] history
    indices, as the evaluator does, with the items after position t replaced by padding.
    """
    history = item_seq[rows]
    later = torch.arange(history.size(1), device=item_seq.device) > positions.unsqueeze(1)
    excluded = torch.zeros(len(rows), n_items, dtype=torch.bool, device=item_seq.device)
    excluded[:, 0] = True
    return excluded.scatter_(1, history.masked_fill(later, 0), True)


def log_policy(model, states, excluded, temperature=1.0):
    """log π(a|s) = log softmax_{a not excluded}(logit(s, a) / temperature): [M, n_items], -inf where excluded."""
    logits = model.catalogue_logits(states).masked_fill_(excluded, float("-inf"))
    return torch.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)


def sample_items(log_probs, num_samples, temperature=1.0, replacement=True, generator=None):
    """num_samples items per row drawn from softmax(log_probs / temperature): [M, num_samples]."""
    probs = torch.softmax(log_probs if temperature == 1 else log_probs / temperature, dim=-1)
    return torch.multinomial(probs, num_samples, replacement=replacement, generator=generator)


def sample_distinct_pairs(log_probs, temperature=1.0, draws=8):
    """Two distinct items per row from softmax(log_probs / temperature), as sampling without
    replacement does (the second from the policy renormalised without the first): [M, 2].

    The second item is the first of ``draws`` - 1 further draws with replacement that differs from the
    first (rejection sampling, exact), and rows without one draw again from the renormalised policy.
    PyTorch's multinomial without replacement (and with one sample) draws an exponential variate per
    item and row, several times slower than draws with replacement on CPU.
    """
    probs = torch.softmax(log_probs if temperature == 1 else log_probs / temperature, dim=-1)
    drawn = torch.multinomial(probs, draws, replacement=True)
    first, later = drawn[:, :1], drawn[:, 1:]
    differs = later != first
    second = later.gather(1, differs.int().argmax(dim=1, keepdim=True))
    missing = ~differs.any(dim=1)
    if missing.any():
        rest = probs[missing].scatter(1, first[missing], 0.0)
        second[missing] = torch.multinomial(rest, 2, replacement=True)[:, :1]
    return torch.cat([first, second], dim=1)


def exact_kl(log_p, log_q):
    """KL(p || q) = sum_a p(a) (log p(a) - log q(a)) per row, over the support of p (log p = -inf off it)."""
    return (log_p.exp() * (log_p - log_q).masked_fill(~torch.isfinite(log_p), 0.0)).sum(-1)


ROW_CHUNK = 1024  # contexts per chunk of the catalogue-wide computations


def row_chunks(n_rows):
    """Index ranges of at most ROW_CHUNK rows covering 0..n_rows-1."""
    return [slice(start, min(start + ROW_CHUNK, n_rows)) for start in range(0, n_rows, ROW_CHUNK)]


@torch.no_grad()
def sample_with_log_probs(model, states, excluded, num_samples, temperature=1.0):
    """K items per context from π(·|s) at ``temperature`` and their log-probabilities: ([M, K], [M, K]),
    computed in chunks of rows so that no [M, n_items] tensor is kept."""
    actions, log_probs = [], []
    for rows in row_chunks(len(states)):
        log_pi = log_policy(model, states[rows], excluded[rows], temperature)
        drawn = sample_items(log_pi, num_samples)
        actions.append(drawn)
        log_probs.append(log_pi.gather(1, drawn))
    return torch.cat(actions), torch.cat(log_probs)


@torch.no_grad()
def log_probs_at(model, states, excluded, actions, temperature=1.0):
    """log π(a_mk|s_m) of given items at ``temperature``: [M, K], in chunks of rows (no gradient)."""
    return torch.cat([
        log_policy(model, states[rows], excluded[rows], temperature).gather(1, actions[rows])
        for rows in row_chunks(len(states))
    ])


def _masked_log_softmax(states, items, scale, excluded):
    """log softmax over the items not excluded of scale * states . items: [C, n_items]."""
    return torch.log_softmax((states @ items.T).mul_(scale).masked_fill_(excluded, float("-inf")), dim=-1)


class _LogProbsAndKL(torch.autograd.Function):
    """log π(a_mk|s_m) [M, K] and KL(π(·|s_m) || π_ref(·|s_m)) [M] for π = softmax(scale * s . items) and
    π_ref likewise, over the items not excluded, in chunks of ROW_CHUNK rows; gradients to the
    policy's states and item vectors only. Nothing of size [M, n_items] is kept: the backward pass
    recomputes each chunk and applies, with z the policy's logits,
        d KL_m / d z_ma = π(a|s_m) (log π(a|s_m) - log π_ref(a|s_m) - KL_m)
        d log π(a_mk|s_m) / d z_ma = 1[a = a_mk] - π(a|s_m).
    """

    @staticmethod
    def forward(ctx, states, items, reference_states, reference_items, excluded, actions, scale, reference_scale):
        log_probs = states.new_empty(actions.shape)
        kl = states.new_empty(len(states))
        for rows in row_chunks(len(states)):
            log_pi = _masked_log_softmax(states[rows], items, scale, excluded[rows])
            log_reference = _masked_log_softmax(reference_states[rows], reference_items, reference_scale, excluded[rows])
            log_probs[rows] = log_pi.gather(1, actions[rows])
            kl[rows] = (log_pi.exp() * (log_pi - log_reference).masked_fill_(excluded[rows], 0.0)).sum(-1)
        ctx.save_for_backward(states, items, reference_states, reference_items, excluded, actions, kl)
        ctx.scales = scale, reference_scale
        return log_probs, kl

    @staticmethod
    def backward(ctx, grad_log_probs, grad_kl):
        states, items, reference_states, reference_items, excluded, actions, kl = ctx.saved_tensors
        scale, reference_scale = ctx.scales
        grad_states, grad_items = torch.empty_like(states), torch.zeros_like(items)
        for rows in row_chunks(len(states)):
            log_pi = _masked_log_softmax(states[rows], items, scale, excluded[rows])
            log_reference = _masked_log_softmax(reference_states[rows], reference_items, reference_scale, excluded[rows])
            pi = log_pi.exp()
            grad_logits = (log_pi - log_reference).masked_fill_(excluded[rows], 0.0).sub_(kl[rows].unsqueeze(1))
            grad_logits.mul_(grad_kl[rows].unsqueeze(1)).sub_(grad_log_probs[rows].sum(1, keepdim=True)).mul_(pi)
            grad_logits.scatter_add_(1, actions[rows], grad_log_probs[rows]).mul_(scale)
            grad_states[rows] = grad_logits @ items
            grad_items.addmm_(grad_logits.T, states[rows])
        return grad_states, grad_items, None, None, None, None, None, None


def _at_least_fp32(tensor):
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


def log_probs_and_kl(model, states, reference, reference_states, excluded, actions, temperature=1.0):
    """log π_θ(a_mk|s_m) [M, K] and the exact KL(π_θ(·|s_m) || π_ref(·|s_m)) [M] at ``temperature``, with
    gradients to the policy (its states and item vectors), without [M, n_items] tensors
    (:class:`_LogProbsAndKL`; the values and gradients are those of :func:`log_policy` and :func:`exact_kl`).
    Computed in fp32 outside autocast (bf16 states, e.g. a GRU's under ``mixed_precision: bf16``, are cast
    up), so that its backward pass, which autocast does not reach, multiplies tensors of one dtype."""
    with torch.no_grad():
        reference_items = reference.item_vectors()
    with torch.autocast(states.device.type, enabled=False):
        return _LogProbsAndKL.apply(
            _at_least_fp32(states), _at_least_fp32(model.item_vectors()), _at_least_fp32(reference_states),
            _at_least_fp32(reference_items), excluded, actions, model.logit_scale / temperature,
            reference.logit_scale / temperature,
        )


def frozen_copy(model):
    """A copy of ``model`` in eval mode with no gradients."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class OnPolicyTrainer(AlignTrainer):
    """Base of PPO, GRPO and online DPO: a loss on items sampled from the policy itself, at every valid
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

    def contexts(self, interaction):
        """At every valid position m of the batch: the policy's state s_m (with gradient), the BC
        model's state (no gradient; for π_BC and r̂) and the excluded history items [M, n_items]."""
        states, _, mask = self.model.position_states(interaction)
        rows, positions = mask.nonzero(as_tuple=True)
        excluded = history_mask(interaction[self.model.ITEM_SEQ], rows, positions, self.model.n_items)
        with torch.no_grad():
            reference_states = self.reference.position_states(interaction)[0]
        return Contexts(states, reference_states, excluded)

    @torch.no_grad()
    def reward(self, reference_states, items):
        """r̂(s_m, a_mk) of the frozen reward model: states [M, d], items [M, K] -> [M, K]."""
        return self.reference.predict_reward(reference_states.unsqueeze(1), items)
