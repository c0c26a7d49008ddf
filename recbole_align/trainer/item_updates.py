"""How a training step updates the item table (``item_updates``): every row (``dense``: RecBole's AdamW/Adam
over all parameters, as before) or only the rows the step touches (``sparse``): the history's items, the
targets and the sampled negatives are read and normalised alone, their gradient is row-sparse and the
table is stepped by :class:`LazyAdam` (each touched row's moments and weights, as large-catalogue trainers
do), the other parameters by the configured AdamW/Adam. ``auto``: sparse when the model and trainer allow
it and the catalogue has more than AUTO_SPARSE_ITEMS items, else dense.

With per-position negatives (``negative_sharing: position``, 128 a position) a step of 128 histories
draws about 800k rows: up to a few hundred thousand items a step touches most of the table anyway, and
the sparse step's gathers cost what the dense step's passes over the table cost (BENCHMARKS.md 16).
"""

import math

import torch

from recbole_align.errors import AlignError

ITEM_UPDATES = ("auto", "dense", "sparse")
# the catalogue above which auto is sparse: on one CPU thread (BENCHMARKS.md 16) the sparse step is faster at
# 700k items and within noise or slower from 10k to 200k
AUTO_SPARSE_ITEMS = 500_000


def sparse_blockers(config, model, trainer_allows):
    """Why the run of ``config`` cannot update only the touched item rows: one phrase per reason, none if it can."""
    checks = (
        (hasattr(model, "use_sparse_item_updates"), f"the model [{type(model).__name__}] reads its whole item table"),
        (trainer_allows, f"[{config['model']}] trains on the whole catalogue (its own loss)"),
        (config["loss_type"] == "SSM", "loss_type CE scores the whole catalogue"),
        (str(config["learner"]).lower() in ("adam", "adamw"), f"learner {config['learner']} has no lazy form here"),
        (not config["weight_decay"], "weight_decay > 0 decays every row at each step"),
        (not config["clip_grad_norm"], "clip_grad_norm takes the norm of every gradient"),
        (config["single_spec"], "several processes average dense gradients"),
    )
    return [reason for allowed, reason in checks if not allowed]


def item_update_mode(config, model, trainer_allows):
    """(``dense`` or ``sparse``, why) for ``config``'s ``item_updates`` (``~``: auto), refusing ``sparse``
    where it cannot run."""
    asked = config["item_updates"] or "auto"
    if asked not in ITEM_UPDATES:
        raise AlignError(f"item_updates must be one of {', '.join(ITEM_UPDATES)}; got {asked!r}.")
    blockers = [] if asked == "dense" else sparse_blockers(config, model, trainer_allows)
    if asked == "sparse" and blockers:
        raise AlignError(f"item_updates sparse cannot run here: {'; '.join(blockers)}. Use item_updates dense or auto.")
    if asked != "auto":
        return asked, "item_updates"
    if blockers:
        return "dense", f"auto: {blockers[0]}"
    if model.n_items <= AUTO_SPARSE_ITEMS:
        return "dense", f"auto: {model.n_items} items <= {AUTO_SPARSE_ITEMS}"
    return "sparse", f"auto: {model.n_items} items > {AUTO_SPARSE_ITEMS}"


class LazyAdam(torch.optim.Optimizer):
    """Adam on row-sparse gradients: at step t, for each row a with a gradient g_a (the others unchanged),
        m_a = b1 m_a + (1 - b1) g_a,  v_a = b2 v_a + (1 - b2) g_a^2,
        w_a -= lr / (1 - b1^t) * m_a / (sqrt(v_a) / sqrt(1 - b2^t) + eps),
    AdamW's update (weight decay 0) on the touched rows. (PyTorch's SparseAdam adds eps before the bias
    correction of sqrt(v), which moves a row with a small gradient otherwise in the first steps.)"""

    def __init__(self, params, lr, betas, eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (beta1, beta2), eps = group["betas"], group["eps"]
            for weight in (p for p in group["params"] if p.grad is not None):
                grad = weight.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[weight]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(weight), exp_avg_sq=torch.zeros_like(weight))
                state["step"] += 1
                exp_avg = state["exp_avg"][rows].mul_(beta1).add_(values, alpha=1 - beta1)
                exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                denom = exp_avg_sq.sqrt_().div_(math.sqrt(1 - beta2 ** state["step"])).add_(eps)
                weight.index_add_(0, rows, exp_avg.div_(denom), alpha=-group["lr"] / (1 - beta1 ** state["step"]))


class TableAndDenseOptimizer:
    """The optimizer of a run with sparse item updates, as RecBole's trainer uses one: ``dense`` (AdamW/Adam)
    for every parameter but the item table, :class:`LazyAdam` for the table."""

    def __init__(self, dense, table, learning_rate, betas):
        self.dense, self.table = dense, LazyAdam([table], lr=learning_rate, betas=betas)

    @property
    def param_groups(self):
        return self.dense.param_groups + self.table.param_groups

    def step(self, closure=None):
        self.dense.step()
        self.table.step()

    def zero_grad(self, set_to_none=True):
        self.dense.zero_grad(set_to_none)
        self.table.zero_grad(set_to_none)

    def state_dict(self):
        return {"dense": self.dense.state_dict(), "table": self.table.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"dense", "table"}:
            raise AlignError("the saved optimizer state is of a run with dense item updates: resume it with item_updates dense.")
        self.dense.load_state_dict(state["dense"])
        self.table.load_state_dict(state["table"])
