"""Collectives for multi-process runs (RecBole's distributed mode, one process per rank): what makes
recbole-align's batch-level computations and its evaluation global across ranks. Every function is
the identity in a single-process run."""

import torch
import torch.distributed as dist


def world_size():
    """The number of processes of the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_gather(tensor):
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def gather_batch(values):
    """(the values of every rank concatenated in rank order, the slice of them that is this rank's):
    the whole batch of a DDP step, whose ranks may hold different numbers of values [N_rank]."""
    if world_size() == 1:
        return values, slice(None)
    sizes = [int(n) for n in _all_gather(torch.tensor([len(values)], device=values.device))]
    padded = values.new_zeros(max(sizes))
    padded[: len(values)] = values
    parts = _all_gather(padded)
    start = sum(sizes[: dist.get_rank()])
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), slice(start, start + len(values))


def broadcast_from_first(tensor):
    """``tensor`` as rank 0 holds it, on every rank (e.g. a result that random tie-breaking makes
    differ between ranks)."""
    if world_size() > 1:
        dist.broadcast(tensor, src=0)
    return tensor


def gather_cases(rows, n_cases):
    """The per-case rows [n, ...] that each rank evaluated, as rows [n_cases, ...] in case order,
    without the cases that RecBole's DistributedSampler repeats to give every rank n = ceil(n_cases /
    world_size) of them (unshuffled, rank r holds cases r, r + world_size, ...)."""
    if world_size() == 1:
        return rows
    return torch.stack(_all_gather(rows), dim=1).flatten(0, 1)[:n_cases]
