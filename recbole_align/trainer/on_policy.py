"""What PPO, GRPO and online DPO share: the policy over the catalogue with the history left out, sampling
from it, the KL between two such policies, and a trainer base that holds the frozen BC model (the KL
anchor π_BC, whose reward head is the reward model r̂).

Each computation runs over the whole catalogue (``policy_estimator: exact``) or over a :class:`Support`
of candidate items per batch (``sampled``): the batch's target items, counted exactly, and a uniform
sample of ``policy_tail_samples`` of the others, each weighted by its inverse inclusion probability, so
that with z the logits, Ẑ = sum_{slots} w e^z estimates the normaliser Z without bias, π̂(slot) = w e^z / Ẑ
is the distribution the rollouts draw from, log π(a) = z_a - log Ẑ, and the KL and every estimate above are
consistent (exact as the sample covers the catalogue); the cost is set by the support, not the catalogue.
``auto``: sampled above AUTO_SAMPLED_ITEMS items.
"""

import copy
import functools
import math
from collections import namedtuple

import torch

from recbole_align.errors import AlignError
from recbole_align.memory import catalogue_rows, row_chunks
from recbole_align.trainer.align_trainer import AlignTrainer

Contexts = namedtuple("Contexts", "states reference_states history support")
POLICY_ESTIMATORS = ("auto", "exact", "sampled")
AUTO_SAMPLED_ITEMS = 100_000  # auto: the whole catalogue up to this many items, a support above


class Support:
    """The candidate items of one batch's policies (module docstring): ``items`` [C] (slot 0 is the padding
    item, always excluded), ``log_weight`` [C] (0 for the batch's targets, -log p for a tail item included
    with probability p) and the slot of every item in it (``slot_of``, 0 for the items outside)."""

    def __init__(self, targets, n_items, tail_samples):
        head = torch.unique(targets)
        drawn = torch.unique(torch.randint(1, n_items, (tail_samples,), device=targets.device))
        tail = drawn[~torch.isin(drawn, head)]
        inclusion = 1 - (1 - 1 / (n_items - 1)) ** tail_samples  # of an item in tail_samples uniform draws
        self.items = torch.cat([targets.new_zeros(1), head, tail])
        self.log_weight = torch.cat([torch.zeros(1 + len(head)), torch.full((len(tail),), -math.log(inclusion))]).to(
            targets.device)
        self.slot_of = torch.zeros(n_items, dtype=torch.long, device=targets.device)
        self.slot_of[self.items] = torch.arange(len(self.items), device=targets.device)

    def slots(self, items):
        """The slots of ``items`` (any shape; 0 for an item outside the support)."""
        return self.slot_of[items]


def policy_estimator(config, n_items):
    """(``exact`` or ``sampled``, why) for ``policy_estimator`` (``~``: auto) and a catalogue of ``n_items``."""
    asked = config["policy_estimator"] or "auto"
    if asked not in POLICY_ESTIMATORS:
        raise AlignError(f"policy_estimator must be one of {', '.join(POLICY_ESTIMATORS)}; got {asked!r}.")
    if asked != "auto":
        return asked, "policy_estimator"
    if n_items <= AUTO_SAMPLED_ITEMS:
        return "exact", f"auto: {n_items} items <= {AUTO_SAMPLED_ITEMS}"
    return "sampled", f"auto: {n_items} items > {AUTO_SAMPLED_ITEMS}"


def _at_least_fp32(tensor):
    return tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor


def in_fp32(function):
    """``function(model, states, ...)`` outside autocast, on fp32 states: the log-probabilities of a rollout
    are computed as :func:`log_probs_and_kl` computes the policy's, so that PPO's first ratio is exactly 1
    under ``mixed_precision: bf16`` too."""

    @functools.wraps(function)
    def exact(model, states, *args, **kwargs):
        with torch.autocast(states.device.type, enabled=False):
            return function(model, _at_least_fp32(states), *args, **kwargs)

    return exact


def history_items(item_seq, rows, positions):
    """The items that the context at position t of history ``rows[m]`` has already seen, which it must
    not be recommended again (as the evaluation excludes them): item_seq[rows[m], : positions[m] + 1]
    with the later items replaced by padding (item 0, always excluded): [M, window] item ids.

    Excluding them costs O(M window) (a scatter of -inf), and no [M, n_items] mask is built."""
    history = item_seq[rows]
    later = torch.arange(history.size(1), device=item_seq.device) > positions.unsqueeze(1)
    return history.masked_fill(later, 0)


def _logits(states, items, scale, history):
    """scale * states . items with -inf at the padding and the history's items: [C, n_items]."""
    logits = (states @ items.T).mul_(scale)
    logits[:, 0] = float("-inf")
    return logits.scatter_(1, history, float("-inf"))


def masked_logits(model, states, history, temperature=1.0, support=None):
    """logit(s, a) / temperature with -inf at the padding and at the history's items: [M, n_items]; over a
    ``support``, at its slots plus their log-weights: [M, C]."""
    scale = model.logit_scale / temperature
    if support is None:
        return _logits(states, model.item_vectors(), scale, history)
    return _logits(states, model.item_vectors(support.items), scale, support.slots(history)).add_(support.log_weight)


def log_policy(model, states, history, temperature=1.0, support=None):
    """log π(a|s) = log softmax_{a not in history}(logit(s, a) / temperature): [M, n_items], -inf on the history;
    over a ``support``: log π̂ of its slots [M, C] (log π of a slot's item is this minus the slot's log-weight)."""
    return torch.log_softmax(masked_logits(model, states, history, temperature, support), dim=-1)


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


def chunk_rows(model, support=None):
    """The rows of a block of ``model``'s catalogue-wide computations (``catalogue_chunk_rows``), or of its
    support-wide ones (as many rows of the support as the same memory holds)."""
    if support is None:
        return model.catalogue_chunk_rows
    return catalogue_rows(len(support.items), model.catalogue_chunk_mb, model.most_chunk_rows)


def chunks_of(model, n_rows, support=None):
    """The blocks of rows in which ``model``'s catalogue-wide (or support-wide) computations go (:func:`chunk_rows`)."""
    return row_chunks(n_rows, chunk_rows(model, support))


def items_of(actions, support):
    """The item ids of ``actions``: themselves, or the items of a support's slots."""
    return actions if support is None else support.items[actions]


def log_weights_at(actions, support):
    """The log-weights of the slots ``actions`` (0 without a support): log π = log π̂ - this."""
    return 0.0 if support is None else support.log_weight[actions]


@torch.no_grad()
@in_fp32
def sample_with_log_probs(model, states, history, num_samples, temperature=1.0, support=None):
    """K items per context from π(·|s) at ``temperature`` (from π̂ over a ``support``: then slots) and their
    log-probabilities log π: ([M, K], [M, K]), computed in chunks of rows so that no [M, n_items] tensor is kept."""
    actions, log_probs = [], []
    for rows in chunks_of(model, len(states), support):
        logits = masked_logits(model, states[rows], history[rows], temperature, support)
        largest = logits.amax(dim=-1, keepdim=True)
        weights = (logits - largest).exp_()  # π up to its normaliser: multinomial normalises it
        drawn = torch.multinomial(weights, num_samples, replacement=True)
        actions.append(drawn)
        log_probs.append(logits.gather(1, drawn).sub_(largest).sub_(weights.sum(dim=-1, keepdim=True).log_())
                         .sub_(log_weights_at(drawn, support)))
    return torch.cat(actions), torch.cat(log_probs)


@torch.no_grad()
@in_fp32
def log_probs_at(model, states, history, actions, temperature=1.0, support=None):
    """log π(a_mk|s_m) of given items (a support's slots) at ``temperature``: [M, K], in chunks of rows (no gradient)."""
    return torch.cat([
        log_policy(model, states[rows], history[rows], temperature, support).gather(1, actions[rows])
        for rows in chunks_of(model, len(states), support)
    ]) - log_weights_at(actions, support)


@torch.no_grad()
@in_fp32
def log_normaliser(model, states, history, temperature=1.0, support=None):
    """log sum_{a not in history} exp(logit(s_m, a) / temperature) (estimated over a ``support``): [M], in
    chunks of rows (no gradient)."""
    return torch.cat([
        torch.logsumexp(masked_logits(model, states[rows], history[rows], temperature, support), dim=-1)
        for rows in chunks_of(model, len(states), support)
    ])


@torch.no_grad()
def sample_pairs(model, states, history, temperature=1.0, support=None):
    """Two distinct items (a support's slots) per context from π(·|s) (:func:`sample_distinct_pairs` at
    ``temperature``): [M, 2], in chunks of rows."""
    return torch.cat([
        sample_distinct_pairs(log_policy(model, states[rows], history[rows], 1.0, support), temperature)
        for rows in chunks_of(model, len(states), support)
    ])


@torch.no_grad()
def policy_kl(model, reference, states, reference_states, history, support=None):
    """KL(π(·|s_m) || π_ref(·|s_m)) per context, exact (estimated over a ``support``): [M], in chunks of rows
    (no gradient). Over a support: sum_slots π̂ (log π̂ - log π̂_ref), the log-weights cancelling."""
    return torch.cat([
        exact_kl(log_policy(model, states[rows], history[rows], 1.0, support),
                 log_policy(reference, reference_states[rows], history[rows], 1.0, support))
        for rows in chunks_of(model, len(states), support)
    ])


def _policy_and_log_ratio(states, items, reference_states, reference_items, history, actions, scales,
                          reference_log_norm, offset):
    """For one chunk of rows: (π [C, n], log π(a|s) - log π_ref(a|s) [C, n] (0 on the history),
    log π at ``actions`` [C, K]), with log π = z - log Z and log π_ref = y - reference_log_norm for
    the masked logits z, y (plus ``offset``, a support's log-weights, which cancel in the log-ratio)."""
    scale, reference_scale = scales
    logits = _logits(states, items, scale, history)
    reference_logits = _logits(reference_states, reference_items, reference_scale, history)
    if offset is not None:
        logits, reference_logits = logits.add_(offset), reference_logits.add_(offset)
    log_ratio = torch.sub(logits, reference_logits)
    chosen_logits = logits.gather(1, actions)
    largest = logits.amax(dim=-1, keepdim=True)
    pi = logits.sub_(largest).exp_()  # in place: exp(z - max z), the chunk's one exp
    total = pi.sum(dim=-1, keepdim=True)
    log_norm = total.log() + largest
    log_ratio.sub_(log_norm - reference_log_norm.unsqueeze(1))
    log_ratio[:, 0] = 0.0
    log_ratio.scatter_(1, history, 0.0)
    return pi.div_(total), log_ratio, chosen_logits.sub_(log_norm)


class _LogProbsAndKL(torch.autograd.Function):
    """log π(a_mk|s_m) [M, K] and KL(π(·|s_m) || π_ref(·|s_m)) [M] for π = softmax(scale * s . items) and
    π_ref likewise, over the items not in the history, in chunks of ``chunk_rows`` rows; gradients to the
    policy's states and item vectors only. π_ref's log-normaliser per row (``reference_log_norm``,
    :func:`log_normaliser`) is given: it is fixed while π changes. Over a support, ``items`` are its rows,
    ``history`` and ``actions`` its slots and ``offset`` its log-weights (π here is π̂). Nothing of size [M, n_items] is
    kept: the backward pass recomputes each chunk and applies, with z the policy's logits,
        d KL_m / d z_ma = π(a|s_m) (log π(a|s_m) - log π_ref(a|s_m) - KL_m)
        d log π(a_mk|s_m) / d z_ma = 1[a = a_mk] - π(a|s_m).
    """

    @staticmethod
    def forward(ctx, states, items, reference_states, reference_items, history, actions, scale, reference_scale,
                reference_log_norm, chunk_rows, offset):
        log_probs = states.new_empty(actions.shape)
        kl = states.new_empty(len(states))
        scales = scale, reference_scale
        for rows in row_chunks(len(states), chunk_rows):
            pi, log_ratio, log_probs[rows] = _policy_and_log_ratio(
                states[rows], items, reference_states[rows], reference_items, history[rows], actions[rows], scales,
                reference_log_norm[rows], offset,
            )
            kl[rows] = log_ratio.mul_(pi).sum(dim=-1)
        ctx.save_for_backward(states, items, reference_states, reference_items, history, actions, kl, reference_log_norm)
        ctx.scales, ctx.chunk_rows, ctx.offset = scales, chunk_rows, offset
        return log_probs, kl

    @staticmethod
    def backward(ctx, grad_log_probs, grad_kl):
        states, items, reference_states, reference_items, history, actions, kl, reference_log_norm = ctx.saved_tensors
        scale = ctx.scales[0]
        grad_states, grad_items = torch.empty_like(states), torch.zeros_like(items)
        for rows in row_chunks(len(states), ctx.chunk_rows):
            pi, grad_logits, _ = _policy_and_log_ratio(
                states[rows], items, reference_states[rows], reference_items, history[rows], actions[rows], ctx.scales,
                reference_log_norm[rows], ctx.offset,
            )
            grad_logits.sub_(kl[rows].unsqueeze(1)).mul_(grad_kl[rows].unsqueeze(1))
            grad_logits.sub_(grad_log_probs[rows].sum(1, keepdim=True)).mul_(pi)
            grad_logits.scatter_add_(1, actions[rows], grad_log_probs[rows])
            grad_states[rows] = (grad_logits @ items).mul_(scale)
            grad_items.addmm_(grad_logits.T, states[rows], alpha=scale)
        return grad_states, grad_items, None, None, None, None, None, None, None, None, None


def log_probs_and_kl(model, states, reference, reference_states, history, actions, temperature=1.0,
                     reference_log_norm=None, support=None):
    """log π_θ(a_mk|s_m) [M, K] and the exact KL(π_θ(·|s_m) || π_ref(·|s_m)) [M] at ``temperature``, with
    gradients to the policy (its states and item vectors), without [M, n_items] tensors
    (:class:`_LogProbsAndKL`; the values and gradients are those of :func:`log_policy` and :func:`exact_kl`);
    over a ``support`` (``actions``: its slots), their estimates, with gradients to its rows only.
    ``reference_log_norm``: π_ref's :func:`log_normaliser` at these contexts, if computed already.
    Computed in fp32 outside autocast (bf16 states, e.g. a GRU's under ``mixed_precision: bf16``, are cast
    up), so that its backward pass, which autocast does not reach, multiplies tensors of one dtype."""
    rows = None if support is None else support.items
    with torch.autocast(states.device.type, enabled=False):
        states, reference_states = _at_least_fp32(states), _at_least_fp32(reference_states)
        if reference_log_norm is None:
            reference_log_norm = log_normaliser(reference, reference_states, history, temperature, support)
        with torch.no_grad():
            reference_items = _at_least_fp32(reference.item_vectors(rows))
        log_probs, kl = _LogProbsAndKL.apply(
            states, _at_least_fp32(model.item_vectors(rows)), reference_states, reference_items,
            history if support is None else support.slots(history), actions, model.logit_scale / temperature,
            reference.logit_scale / temperature, _at_least_fp32(reference_log_norm),
            chunk_rows(model, support), None if support is None else support.log_weight,
        )
        return log_probs - log_weights_at(actions, support), kl


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
        self.estimator, why = policy_estimator(config, model.n_items)  # before super() builds the optimizer
        self.tail_samples = config["policy_tail_samples"]
        super().__init__(config, model)
        self.logger.info(f"policy estimator: {self.estimator} ({why})")
        self.reference = frozen_copy(model)
        self.sampling_temperature = config["sampling_temperature"]
        self.batch_stats = []

    @property
    def sparse_item_updates(self):
        """Over a support the losses read the support's item rows only; over the catalogue, every row."""
        return self.estimator == "sampled"

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.batch_stats = []
        losses = super()._train_epoch(train_data, epoch_idx, self.batch_loss, show_progress)
        if self.batch_stats:
            stats = self.batch_stats
            self.epoch_log[-1].update({k: sum(float(s[k]) for s in stats) / len(stats) for k in stats[0]})
        return losses

    def contexts(self, interaction):
        """At every valid position m of the batch: the policy's state s_m (with gradient), the BC
        model's state (no gradient; for π_BC and r̂) and the history items to exclude [M, window]; and the
        batch's :class:`Support` (None over the whole catalogue)."""
        states, targets, mask = self.model.position_states(interaction)
        rows, positions = mask.nonzero(as_tuple=True)
        history = history_items(self.model.trimmed(interaction)[self.model.ITEM_SEQ], rows, positions)
        with torch.no_grad():
            reference_states = self.reference.position_states(interaction)[0]
        support = Support(targets, self.model.n_items, self.tail_samples) if self.estimator == "sampled" else None
        return Contexts(states, reference_states, history, support)

    @torch.no_grad()
    def reward(self, reference_states, items):
        """r̂(s_m, a_mk) of the frozen reward model: states [M, d], items [M, K] -> [M, K]."""
        return self.reference.predict_reward(reference_states.unsqueeze(1), items)
