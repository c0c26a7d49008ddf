"""HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words") as a RecBole sequential model.

A dense, padded port of Meta's research code (generative-recommenders, ``research/modeling/
sequential/hstu.py``), read top to bottom as the paper's figure: relative bias, one HSTU block,
the encoder, the RecBole model. Every position predicts the next item (the all-position loss);
the user state is the L2-normalised output at the last real position, and an item's score is
cosine(user state, item embedding) / temperature.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_align.errors import AlignError
from recbole_align.model.policy import NextItemPolicy, next_step


@torch.no_grad()
def time_bucket(gaps, num_buckets=128):
    """Log-spaced bucket of a time gap in seconds: floor(ln(max(|gap|, 1)) / 0.301), in [0, num_buckets].

    Gaps are taken exactly (integer seconds in float64 inputs) and bucketed in float32, in place.
    """
    buckets = gaps.abs().float().clamp_(min=1).log_().div_(0.301).floor_()
    return buckets.clamp_(0, num_buckets).long()


class _SampledDotProducts(torch.autograd.Function):
    """out[m, r] = states[m] . items[samples[m, r]]: [M, d], [N, d], [M, R] -> [M, R], in chunks of rows.

    Costs what the M*R products use: no [M, N] logits and no [M, R, d] tensor is kept. The backward
    gives grad_states[m] = sum_r g[m, r] items[samples[m, r]] and grad_items[a] = sum_{(m, r):
    samples[m, r] = a} g[m, r] states[m], through a dense [chunk, N] matrix of g and two GEMMs while the
    catalogue is small (N <= 64 R), else by gathering and index_add.
    """

    CHUNK = 1024

    @staticmethod
    def forward(ctx, states, items, samples):
        ctx.save_for_backward(states, items, samples)
        out = states.new_empty(samples.shape)
        for rows in torch.arange(len(samples), device=samples.device).split(_SampledDotProducts.CHUNK):
            drawn = items.index_select(0, samples[rows].flatten()).view(len(rows), samples.size(1), -1)
            out[rows] = (drawn * states[rows].unsqueeze(1)).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad):
        states, items, samples = ctx.saved_tensors
        grad_states, grad_items = torch.empty_like(states), torch.zeros_like(items)
        dense = len(items) <= 64 * samples.size(1)
        for rows in torch.arange(len(samples), device=samples.device).split(_SampledDotProducts.CHUNK):
            if dense:
                grad_dense = grad.new_zeros(len(rows), len(items)).scatter_add_(1, samples[rows], grad[rows])
                grad_items.addmm_(grad_dense.T, states[rows])
                grad_states[rows] = grad_dense @ items
            else:
                drawn = items.index_select(0, samples[rows].flatten()).view(len(rows), samples.size(1), -1)
                grad_states[rows] = (grad[rows].unsqueeze(-1) * drawn).sum(1)
                weighted = grad[rows].unsqueeze(-1) * states[rows].unsqueeze(1)
                grad_items.index_add_(0, samples[rows].flatten(), weighted.flatten(0, 1))
        return grad_states, grad_items, None


NEGATIVE_SHARING = ("position", "sequence", "batch")


def draw_negatives(n_items, mask, num_negatives, sharing):
    """Uniform negatives from items 1..n_items-1 for the positions at ``mask`` [B, L], as ``sharing`` says who
    draws the same R items: [M, R] (position: every position its own draws, the HSTU reference's
    estimator), [B, R] (sequence: the positions of one history share them) or [R] (batch: every position)."""
    shape = {"position": (int(mask.sum()), num_negatives), "sequence": (mask.size(0), num_negatives)}
    return torch.randint(1, n_items, shape.get(sharing, (num_negatives,)), device=mask.device)


def negative_products(states, items, drawn, mask, sharing):
    """The M states [M, d] at ``mask`` against the rows ``drawn`` (:func:`draw_negatives`) of ``items``:
    (negatives [M, R], products [M, R]); position: M*R products, sequence: one [L, d] x [d, R] GEMM per
    history, batch: one [M, d] x [d, R] GEMM."""
    if sharing == "position":
        return drawn, _SampledDotProducts.apply(states, items, drawn)
    if sharing == "sequence":
        padded = states.new_zeros(*mask.shape, states.size(-1)).masked_scatter(mask.unsqueeze(-1), states)
        products = torch.bmm(padded, F.embedding(drawn, items).transpose(1, 2))[mask]
        return drawn.unsqueeze(1).expand(*mask.shape, drawn.size(-1))[mask], products
    return drawn.expand(len(states), len(drawn)), states @ items[drawn].T


def sampled_negative_logits(states, items, mask, num_negatives, sharing):
    """Uniform negatives from items 1..N-1 (N = len(items)) and their dot products with the M states [M, d]
    at ``mask`` [B, L]: (negatives [M, R], products [M, R]); see :func:`draw_negatives`."""
    return negative_products(states, items, draw_negatives(len(items), mask, num_negatives, sharing), mask, sharing)


class _BucketLookup(torch.autograd.Function):
    """``weights[index]`` whose backward is a bincount: the same gradient as indexing, several times
    faster on CPU than the scatter-add that indexing's backward runs over B*L*L positions. Under
    PyTorch's deterministic algorithms (:func:`recbole_align.compat.deterministic_cuda`) it is an
    accumulating index_put_, which has a deterministic CUDA kernel (a weighted bincount has none)."""

    @staticmethod
    def forward(ctx, weights, index):
        ctx.save_for_backward(index)
        ctx.n_weights = weights.numel()
        return weights[index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        if torch.are_deterministic_algorithms_enabled():
            grad_weights = grad.new_zeros(ctx.n_weights).index_put_((index.flatten(),), grad.flatten(), accumulate=True)
            return grad_weights, None
        grad_weights = torch.bincount(index.flatten(), weights=grad.flatten(), minlength=ctx.n_weights)
        return grad_weights.to(grad.dtype), None


class RelativeBucketedTimeAndPositionBias(nn.Module):
    """rab[i, j] = w_pos[j - i + N - 1] + w_time[bucket(t_{i+1} - t_j)], shared across heads.

    t_{i+1} is the timestamp of the item position i predicts (the target's at the last position).
    """

    def __init__(self, max_len, num_buckets):
        super().__init__()
        self.max_len, self.num_buckets = max_len, num_buckets
        self.pos_weights = nn.Parameter(torch.empty(2 * max_len - 1).normal_(std=0.02))
        self.time_weights = nn.Parameter(torch.empty(num_buckets + 1).normal_(std=0.02))

    def forward(self, time_buckets):
        """time_buckets: [B, L, L] (L <= max_len) from :func:`time_gap_buckets` -> bias [B, L, L]."""
        pos = torch.arange(time_buckets.size(1), device=time_buckets.device)
        pos_bias = self.pos_weights[pos.unsqueeze(0) - pos.unsqueeze(1) + self.max_len - 1]
        return pos_bias + _BucketLookup.apply(self.time_weights, time_buckets)


def time_gap_buckets(time_seq, next_time_seq, num_buckets):
    """bucket(t_{i+1} - t_j) for every query i and key j: [B, L] x 2 -> [B, L, L] (shared by all blocks)."""
    return time_bucket(next_time_seq.unsqueeze(2) - time_seq.unsqueeze(1), num_buckets)


class HSTUBlock(nn.Module):
    """One HSTU layer (paper eq. 1-3), no softmax and no feed-forward block.

    U, V, Q, K = Split(SiLU(W_uvqk LN(x)))                     (1) pointwise projection
    A = SiLU(Q K^T + rab) / n * causal * key_valid             (2) spatial aggregation, n = max_len
    y = x + W_o Dropout(U * LN(A V))                           (3) pointwise transformation
    """

    def __init__(self, d, n_heads, attention_dim, linear_dim, dropout, max_len, num_buckets):
        super().__init__()
        self.n_heads, self.attention_dim, self.linear_dim = n_heads, attention_dim, linear_dim
        self.uvqk = nn.Linear(d, 2 * n_heads * (linear_dim + attention_dim), bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.rel_bias = RelativeBucketedTimeAndPositionBias(max_len, num_buckets)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(n_heads * linear_dim, d)
        nn.init.xavier_uniform_(self.out.weight)

    def forward(self, x, attn_mask, time_buckets):
        """x: [B, L, d]; attn_mask: [B, 1, L, L] causal and key-padding mask times 1/n -> [B, L, d]."""
        B, L, _ = x.shape
        H, dv, dqk = self.n_heads, self.linear_dim, self.attention_dim
        h = F.silu(self.uvqk(F.layer_norm(x, x.shape[-1:], eps=1e-6)))
        u, v, q, k = torch.split(h, [H * dv, H * dv, H * dqk, H * dqk], dim=-1)
        qk = torch.einsum("bihd,bjhd->bhij", q.view(B, L, H, dqk), k.view(B, L, H, dqk))
        rab = self.rel_bias(time_buckets).unsqueeze(1)
        attn = F.silu(qk + rab) * attn_mask  # the mask carries the 1/n
        av = torch.einsum("bhij,bjhd->bihd", attn, v.view(B, L, H, dv)).reshape(B, L, H * dv)
        return x + self.out(self.dropout(u * F.layer_norm(av, av.shape[-1:], eps=1e-6)))


class HSTUEncoder(nn.Module):
    """x_0 = Dropout(E[item] * sqrt(d) + P[pos]) (padding zeroed); n_layers HSTU blocks; L2-normalise."""

    def __init__(self, n_items, max_len, d, n_layers, n_heads, attention_dim, linear_dim, dropout, num_buckets):
        super().__init__()
        self.item_embedding = nn.Embedding(n_items, d, padding_idx=0)
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02, a=-0.04, b=0.04)  # cut at 2 std
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.max_len, self.num_buckets = max_len, num_buckets
        self.position_embedding = nn.Embedding(max_len, d)
        nn.init.xavier_normal_(self.position_embedding.weight)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            HSTUBlock(d, n_heads, attention_dim, linear_dim, dropout, max_len, num_buckets)
            for _ in range(n_layers)
        )

    def forward(self, item_seq, item_seq_len, time_seq, next_time_seq):
        """item_seq: [B, L] left-aligned; -> L2-normalised outputs [B, L, d] (zero at padding)."""
        L = item_seq.size(1)
        pos = torch.arange(L, device=item_seq.device)
        valid = (pos.unsqueeze(0) < item_seq_len.unsqueeze(1)).unsqueeze(-1)  # [B, L, 1]
        x = self.item_embedding(item_seq) * math.sqrt(self.item_embedding.embedding_dim)
        x = self.dropout(x + self.position_embedding(pos)) * valid
        # causal (diagonal included) and key-padding mask, [B, 1, L(query), L(key)]; with left-aligned
        # sequences the key mask only matters for padded query rows, which are zeroed at the end anyway
        causal = torch.ones(L, L, dtype=torch.bool, device=item_seq.device).tril()
        attn_mask = (causal & valid.transpose(1, 2)).unsqueeze(1).to(x.dtype) / self.max_len  # A's 1/n, n = the padded window
        time_buckets = time_gap_buckets(time_seq, next_time_seq, self.num_buckets)
        for block in self.blocks:
            x = block(x, attn_mask, time_buckets)
        return F.normalize(x, dim=-1, eps=1e-6) * valid


class HSTU(NextItemPolicy, SequentialRecommender):
    """HSTU trained with the all-position next-item loss: sampled softmax ('SSM') or exact softmax ('CE').

    Logits are cosine(user output, item embedding) / temperature over items 1..n_items-1 (0 is padding).
    """

    # config keys that fix the network's shape and policy; a post-training run takes them from its BC checkpoint
    architecture_keys = (
        "embedding_size", "n_layers", "n_heads", "attention_dim", "linear_dim", "num_buckets",
        "MAX_ITEM_LIST_LENGTH", "temperature", "reward_head",
    )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.TIME = config["TIME_FIELD"]
        self.TIME_SEQ = f"{self.TIME}{config['LIST_SUFFIX']}"
        if self.TIME is None or self.TIME_SEQ not in dataset.field2type:
            raise AlignError(
                f"HSTU needs a timestamp field (TIME_FIELD={self.TIME!r}) and its history "
                f"'{self.TIME_SEQ}': load it with load_col, e.g. inter: [user_id, item_id, timestamp]."
            )
        self.temperature = config["temperature"]
        self.num_negatives = config["num_negatives"]
        self.negative_sharing = config["negative_sharing"]
        self.loss_type = config["loss_type"]
        if self.loss_type not in ("SSM", "CE"):
            raise AlignError(f"HSTU loss_type must be 'SSM' or 'CE', got {self.loss_type!r}.")
        if self.negative_sharing not in NEGATIVE_SHARING:
            raise AlignError(
                f"negative_sharing must be one of {list(NEGATIVE_SHARING)}, got {self.negative_sharing!r}."
            )
        self.encoder = HSTUEncoder(
            n_items=self.n_items,
            max_len=self.max_seq_length,
            d=config["embedding_size"],
            n_layers=config["n_layers"],
            n_heads=config["n_heads"],
            attention_dim=config["attention_dim"],
            linear_dim=config["linear_dim"],
            dropout=config["dropout_prob"],
            num_buckets=config["num_buckets"],
        )
        self.init_policy(config, dataset, config["embedding_size"])

    @property
    def item_embedding(self):
        """The item table, shared by the encoder input and the output logits."""
        return self.encoder.item_embedding

    def forward(self, item_seq, item_seq_len, time_seq, next_time_seq):
        """Normalised outputs [B, L, d] at every position (see HSTUEncoder.forward)."""
        return self.encoder(item_seq, item_seq_len, time_seq, next_time_seq)

    def sequence_outputs(self, interaction):
        """Outputs [B, L, d]; position t is conditioned on the timestamp of the item it predicts."""
        item_seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        next_times = next_step(interaction[self.TIME_SEQ], seq_len, interaction[self.TIME])
        return self.forward(item_seq, seq_len, interaction[self.TIME_SEQ], next_times)

    touched_rows = False  # set by use_sparse_item_updates: a step reads and updates only the rows it touches

    def item_vectors(self, items=None):
        """L2-normalised item embeddings: the table [n_items, d] (row 0 is padding), or of ``items`` [...] ->
        [..., d]; with ``touched_rows``, only those rows are read (and get a row-sparse gradient)."""
        if items is None or not self.touched_rows:
            table = F.normalize(self.item_embedding.weight, dim=-1, eps=1e-6)
            return table if items is None else table[items]
        return F.normalize(self.item_embedding(items), dim=-1, eps=1e-6)

    def use_sparse_item_updates(self):
        """From now on a training step reads (and normalises) only the item rows it touches: the history's,
        the targets and the sampled negatives, whose gradient is row-sparse (``item_updates: sparse``).
        Returns the item table, for the optimizer made for such gradients."""
        self.touched_rows = self.item_embedding.sparse = True
        return self.item_embedding.weight

    @property
    def logit_scale(self):
        """Logits are cosine(state, item) / temperature."""
        return 1 / self.temperature

    def position_nll(self, states, targets, mask):
        """-log pi(target | state): exact softmax ('CE') or sampled softmax ('SSM': num_negatives
        uniform draws from items 1..n_items-1, drawn per ``negative_sharing``, the target's own draws
        masked)."""
        if self.loss_type == "CE":
            return super().position_nll(states, targets, mask)
        drawn = draw_negatives(self.n_items, mask, self.num_negatives, self.negative_sharing)
        if self.touched_rows:  # the distinct rows this step reads, and the draws as indices into them
            rows, index = torch.unique(torch.cat([targets, drawn.flatten()]), return_inverse=True)
            items, targets, drawn = self.item_vectors(rows), index[: len(targets)], index[len(targets):].view_as(drawn)
        else:
            items = self.item_vectors()
        negatives, products = negative_products(states, items, drawn, mask, self.negative_sharing)
        pos_logits = (states * items[targets]).sum(-1, keepdim=True) / self.temperature
        neg_logits = products / self.temperature
        neg_logits = neg_logits.masked_fill(negatives == targets.unsqueeze(1), -5e4)
        logits = torch.cat([pos_logits, neg_logits], dim=-1)
        return torch.logsumexp(logits, dim=-1) - logits[:, 0]

    def predict(self, interaction):
        return self.item_logits(self.user_state(interaction), interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
