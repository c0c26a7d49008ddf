"""The reward head: a shallow rating predictor on top of a generative recommender.

The Exp-RSFT paper (sec. 6) "co-train[s] a reward model as a shallow reward head on top of the
generative recommender" that predicts the rating of the next item from the history; PPO and DPO
post-train against it, and the diagnostics compare it with naive rating predictors (Table 2). The
paper gives no architecture; this one is ours.
"""

import torch
import torch.nn as nn


class RewardHead(nn.Module):
    """r̂(s, a) = μ + w_2ᵀ ReLU(W_1 [h_s, e_a, h_s ⊙ e_a] + b_1) + b_2  (ours).

    h_s is the user state, e_a the item's (normalised) embedding, μ a fixed offset (the mean
    training rating), so that the untrained head is the global-mean predictor and the MLP learns
    the residual; the hidden width is the embedding size d.
    """

    def __init__(self, d, offset):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * d, d), nn.ReLU(), nn.Linear(d, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.register_buffer("offset", torch.tensor(float(offset)))

    def forward(self, states, items):
        """states [..., d] and item vectors [..., d] (broadcast) -> predicted ratings [...]."""
        states, items = torch.broadcast_tensors(states, items)
        features = torch.cat([states, items, states * items], dim=-1)
        return self.offset + self.mlp(features).squeeze(-1)

