"""The memory budget of catalogue-wide computations: how many rows of a [rows x n_items] block fit.

Full-catalogue scoring (evaluation, ``recommend``, Avg Reward) and the on-policy trainers' policies
(PPO, GRPO, online DPO) build [rows x n_items] tensors; each works through its rows in chunks of
:func:`catalogue_rows` rows, so that its peak memory follows ``catalogue_chunk_mb``, not the
catalogue size times the batch.
"""

# Bytes per (row, item) cell that one chunk holds at its peak: the fp32 scores plus the working copies
# beside them (evaluation: RecBole's int32 position matrix, the rank counts' copy and comparisons; the
# on-policy trainers: the policy's and the reference's logits and their difference, or the sampling weights).
BYTES_PER_CELL = 16
DEFAULT_BUDGET_MB = 512  # catalogue_chunk_mb of overall.yaml, for a checkpoint whose config predates the key


def catalogue_rows(n_items, budget_mb, most=None):
    """The rows of a [rows x n_items] block of BYTES_PER_CELL bytes a cell within ``budget_mb`` MiB
    (at least 1; at most ``most``)."""
    budget = (DEFAULT_BUDGET_MB if budget_mb is None else budget_mb) * 2**20
    rows = max(1, int(budget // (n_items * BYTES_PER_CELL)))
    return rows if most is None else min(rows, most)


def row_chunks(n_rows, size):
    """Index ranges of at most ``size`` rows covering 0..n_rows-1."""
    return [slice(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]
