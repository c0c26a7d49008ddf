"""The methods the experiment harness compares: one entry per post-training method in :data:`METHOD_TABLE`
(its rows, its tuning key, whether it trains on its own samples), read by the planner, the tables and
``benchmarks/throughput.py``. Adding a method to the harness is one entry here."""

import itertools
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    """A post-training method of the harness.

    ``grid``: its tuning key beside SHARED_GRID (2 values: 2 x 2 x 2 = 8 trials a row);
    ``rows``: (label, settings) of the rows that naming the method runs (default: its own row, no settings);
    ``named_rows``: rows run only when --methods names them by label;
    ``on_policy``: it samples from the policy and scores the samples with the BC reward head;
    ``refused``: {row label: {grid key: values}} that the row's trainer refuses (its check_config), left
    out of its trials."""

    grid: dict
    rows: tuple = None
    named_rows: tuple = ()
    on_policy: bool = False
    refused: dict = field(default_factory=dict)


SHARED_GRID = {"learning_rate": (1e-4, 1e-3), "dropout_prob": (0.0, 0.2)}
METHOD_TABLE = {
    # "exact": -log pi by the exact softmax over the catalogue instead of HSTU's sampled softmax (BC's loss)
    "ContinuedBC": Method({"train_batch_size": (64, 128)}, named_rows=(("ContinuedBC exact", {"loss_type": "CE"}),)),
    "ExpRSFT": Method({"reward_lambda": (0.5, 1.0)},
                      # the analogue of the paper's Table 6 (trajectory rewards), with RSFT's
                      named_rows=(("ExpRSFT trajectory", {"reward_scope": "trajectory"}),
                                  ("ExpRSFT exact", {"loss_type": "CE"}))),
    "RSFT": Method({"weight_normalization": ("mean", "sum")},
                   rows=(("RSFT", {}), ("RSFT rescaled", {"rescale_rewards": True}),
                         ("RSFT standardised", {"standardize_rewards": True})),
                   named_rows=(("RSFT trajectory", {"reward_scope": "trajectory"}),),
                   # standardised weights sum to about 0: the trainer refuses to divide by their sum
                   refused={"RSFT standardised": {"weight_normalization": ("sum",)},
                            "RSFT trajectory": {"weight_normalization": ("sum",)}}),
    "DRPO": Method({"drpo_keep_fraction": (0.25, 0.5)}),
    # "sampled": the policy, its samples and the KL over a support of candidates (policy_estimator), to validate
    # it against the exact rows on catalogues where auto takes the exact estimator
    "PPO": Method({"kl_coef": (0.01, 0.1)}, named_rows=(("PPO sampled", {"policy_estimator": "sampled"}),), on_policy=True),
    "DPO": Method({"dpo_beta": (0.1, 0.5)}, named_rows=(("DPO sampled", {"policy_estimator": "sampled"}),), on_policy=True),
    "GRPO": Method({"kl_coef": (0.01, 0.1)}, named_rows=(("GRPO sampled", {"policy_estimator": "sampled"}),),
                   on_policy=True),
}
NAMED_ROWS = {label for method in METHOD_TABLE.values() for label, _ in method.named_rows}
METHODS = ("BC", *METHOD_TABLE)  # what --methods takes (besides row labels)
BASELINES = ("SASRec", "GRU4Rec", "BERT4Rec", "NARM", "Caser", "FPMC")


def all_rows():
    """{label: (label, model, settings)} of every post-training row: each method's rows and named rows."""
    return {label: (label, m, settings) for m, method in METHOD_TABLE.items()
            for label, settings in (*(method.rows or ((m, {}),)), *method.named_rows)}


def method_rows(methods):
    """(label, model, settings) of the post-training rows of ``methods``: a method's name gives all its
    rows (RSFT on raw, [0, 1]-rescaled and standardised ratings), a row's label that row alone."""
    rows = all_rows()
    labels = [label for m in methods if m != "BC"
              for label in ([label for label, _ in METHOD_TABLE[m].rows or ((m, {}),)] if m in METHOD_TABLE else [m])]
    return [rows[label] for label in dict.fromkeys(labels)]  # a row named twice (RSFT and RSFT rescaled) once


def grid(label):
    """The tuning trials of a row: every combination of SHARED_GRID and its method's grid key, but the
    values its trainer refuses (``Method.refused``: those rows get fewer trials, not failed ones)."""
    method = METHOD_TABLE[all_rows()[label][1]]
    refused = method.refused.get(label, {})
    space = {key: tuple(v for v in values if v not in refused.get(key, ()))
             for key, values in {**SHARED_GRID, **method.grid}.items()}
    return [dict(zip(space, values)) for values in itertools.product(*space.values())]
