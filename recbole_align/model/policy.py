"""What every post-trainable backbone shares: a RecBole sequential model read as a policy
pi(a | s) = softmax_a(logit(s, a)) over the item catalogue, with the per-position losses, user
states and optional reward head that behaviour cloning and the post-training trainers use."""

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_align.errors import AlignError
from recbole_align.memory import catalogue_rows
from recbole_align.model.reward_head import RewardHead


def next_step(seq_list, seq_len, target):
    """``seq_list`` shifted left by one, with ``target`` at index seq_len - 1 and zeros after it."""
    shifted = torch.cat([seq_list[:, 1:], torch.zeros_like(seq_list[:, :1])], dim=1)
    shifted = shifted.scatter(1, (seq_len - 1).unsqueeze(1), target.to(seq_list.dtype).unsqueeze(1))
    valid = torch.arange(seq_list.size(1), device=seq_list.device) < seq_len.unsqueeze(1)
    return shifted * valid


class NextItemPolicy:
    """Mixin for a ``SequentialRecommender``: the next-item policy and its losses at the trained positions.

    A subclass defines ``sequence_outputs(interaction)`` (user states [B, L, d], the state at
    position t conditioned on items 0..t), ``item_vectors(items=None)`` (the table, or the rows of ``items``) and ``logit_scale`` (logit(s, a) =
    logit_scale * state . item_vector), and
    calls :meth:`init_policy` in its constructor. ``position_nll`` defaults to the exact softmax.
    """

    all_position_training = True  # every position of a history predicts its next item
    state_chunk_size = 256  # cases per forward pass of user_state (evaluation)
    most_chunk_rows = 1024  # contexts per block of the on-policy trainers' catalogue-wide computations, at most

    def init_policy(self, config, dataset, d):
        """Rating fields, the rows of a catalogue-wide block within ``catalogue_chunk_mb`` and, with
        ``reward_head: True``, a reward head of width ``d``."""
        self.catalogue_chunk_mb = config["catalogue_chunk_mb"]
        self.catalogue_chunk_rows = catalogue_rows(self.n_items, self.catalogue_chunk_mb, self.most_chunk_rows)
        self.RATING = config["RATING_FIELD"]
        self.LIST_SUFFIX = config["LIST_SUFFIX"]
        self.RATING_SEQ = f"{self.RATING}{self.LIST_SUFFIX}"
        self.reward_loss_weight = config["reward_loss_weight"]
        self.reward_head = None
        if config["reward_head"]:
            if self.RATING not in dataset.inter_feat:
                raise AlignError(f"reward_head=True needs ratings: load the [{self.RATING}] field (RATING_FIELD).")
            self.reward_head = RewardHead(d, dataset.inter_feat[self.RATING].float().mean())

    def trimmed(self, interaction):
        """The batch with every history field (``*_list``, [B, window]) cut to the batch's longest
        history. Histories are left-aligned, so only padding goes: the states of the real positions
        are the same (HSTU's attention keeps the fixed window n as its denominator), at a cost that
        follows the real lengths instead of the window."""
        longest = int(interaction[self.ITEM_SEQ_LEN].max())
        window = interaction[self.ITEM_SEQ].size(1)
        if longest >= window:
            return interaction
        return Interaction({
            key: value[:, :longest] if key.endswith(self.LIST_SUFFIX) and value.dim() >= 2 else value
            for key, value in interaction.interaction.items()
        })

    def position_mask(self, item_seq, seq_len):
        """The positions that predict a next item: [B, L] bool (every valid one here)."""
        return torch.arange(item_seq.size(1), device=item_seq.device) < seq_len.unsqueeze(1)

    def predict_reward(self, states, items):
        """The reward head's predicted rating r̂(s, a): states [..., d], item ids [...] -> [...]."""
        return self.reward_head(states, self.item_vectors(items))

    def position_states(self, interaction):
        """States at the M trained positions [M, d], the items they predict [M] and the mask [B, L]
        (L: the batch's longest history, see :meth:`trimmed`)."""
        interaction = self.trimmed(interaction)
        item_seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        mask = self.position_mask(item_seq, seq_len)
        targets = next_step(item_seq, seq_len, interaction[self.POS_ITEM_ID])[mask]
        return self.sequence_outputs(interaction)[mask], targets, mask

    def catalogue_logits(self, states):
        """logit(s, a) for every item: [..., d] -> [..., n_items]; column 0 (padding) is -inf."""
        logits = states @ self.item_vectors().T
        if self.logit_scale != 1:
            logits = logits.mul_(self.logit_scale)
        logits[..., 0] = float("-inf")
        return logits

    def item_logits(self, states, items):
        """logit(s, a) at given items: states [M, d], items [M, K] -> [M, K]."""
        return (states.unsqueeze(-2) * self.item_vectors(items)).sum(-1) * self.logit_scale

    def position_nll(self, states, targets, mask):
        """-log pi(target | state) per row, exact softmax over the catalogue: [M] (``mask`` [B, L]:
        where the M positions are, for estimators that share samples within a sequence)."""
        return F.cross_entropy(self.catalogue_logits(states), targets, reduction="none")

    def position_losses(self, interaction, position_states=None):
        """-log pi(a_t | s_t) at every trained position (``position_states``: this batch's, if computed).

        Returns (loss [B, L], zero elsewhere; mask [B, L]; next ratings [B, L] or None without ratings).
        """
        interaction = self.trimmed(interaction)
        seq_len = interaction[self.ITEM_SEQ_LEN]
        states, targets, mask = position_states or self.position_states(interaction)
        valid_loss = self.position_nll(states, targets, mask)
        loss = valid_loss.new_zeros(mask.shape).masked_scatter(mask, valid_loss)
        next_rating = None
        if self.RATING_SEQ in interaction and self.RATING in interaction:
            next_rating = next_step(interaction[self.RATING_SEQ], seq_len, interaction[self.RATING])
        return loss, mask, next_rating

    def calculate_loss(self, interaction):
        """Mean next-item loss over the trained positions of the batch; with the reward head,
        + reward_loss_weight * (1/M) sum_m (r̂(s_m, a_m) - r_m)^2 over the same positions, whose
        gradient also trains the trunk and the item embeddings (co-training, as the paper)."""
        position_states = self.position_states(interaction)
        loss, mask, next_rating = self.position_losses(interaction, position_states)
        loss = loss.sum() / mask.sum()
        if self.reward_head is None:
            return loss
        states, targets, _ = position_states
        return loss + self.reward_loss_weight * F.mse_loss(self.predict_reward(states, targets), next_rating[mask])

    def user_state(self, interaction):
        """The state at position item_length - 1, which predicts the case's target: [B, d].

        Computed for chunks of ``state_chunk_size`` cases of similar history length, each trimmed to
        its longest history: an evaluation batch costs what its real lengths cost, and its memory is
        that of one chunk (each case's state is its own, so the result is the same)."""
        seq_len = interaction[self.ITEM_SEQ_LEN]
        chunks = torch.argsort(seq_len).split(self.state_chunk_size)
        if len(chunks) == 1:
            return self._last_state(interaction)
        parts = [self._last_state(interaction[rows]) for rows in chunks]
        states = parts[0].new_empty(len(seq_len), parts[0].size(-1))
        for rows, part in zip(chunks, parts):
            states[rows] = part
        return states

    def _last_state(self, interaction):
        interaction = self.trimmed(interaction)
        return self.gather_indexes(self.sequence_outputs(interaction), interaction[self.ITEM_SEQ_LEN] - 1)

    def predict(self, interaction):
        return self.full_sort_predict(interaction).gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        return self.catalogue_logits(self.user_state(interaction))
