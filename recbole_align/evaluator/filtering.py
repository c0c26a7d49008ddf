"""Rating-filtered evaluation: the test cases whose held-out item was rated >= a threshold."""

from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_align.errors import AlignError


def rating_filter(config, eval_loader, phase):
    """keep [N] bool: the cases of ``eval_loader`` (in its order) whose target rating >= ``eval_rating_threshold``;
    None when the threshold is ``~`` (no filter). A clear error when no case, or no rating, is there."""
    threshold = config["eval_rating_threshold"]
    if threshold is None:
        return None
    dataset = eval_loader._dataset
    rating_field = config["RATING_FIELD"]
    if rating_field not in dataset.inter_feat:
        raise AlignError(
            f"eval_rating_threshold={threshold} needs a rating field, but dataset "
            f"[{config['dataset']}] has no [{rating_field}] column loaded (check load_col and the "
            f".inter file), or set eval_rating_threshold: ~ to evaluate all cases."
        )
    keep = dataset.inter_feat[rating_field] >= threshold
    if not keep.any():
        ratings = dataset.inter_feat[rating_field]
        raise AlignError(
            f"No {phase} case of [{config['dataset']}] has {rating_field} >= {threshold} "
            f"(ratings range {ratings.min().item():g}..{ratings.max().item():g}): the filtered "
            f"{phase} set is empty. Lower eval_rating_threshold or check normalize_all/normalize_field."
        )
    return keep


def rating_filtered_loader(config, eval_loader, phase):
    """A full-sort loader over the cases of ``eval_loader`` whose target rating >= threshold
    (:func:`rating_filter`), or ``eval_loader`` itself without a threshold.

    Each row of a sequential full-sort loader is one held-out case, so filtering rows and reusing
    RecBole's loader and evaluator gives exactly the metrics restricted to those cases. The new loader
    takes ``eval_loader``'s config, whose ``eval_batch_size`` is bounded by ``catalogue_chunk_mb``
    (data.split_loaders).
    """
    keep = rating_filter(config, eval_loader, phase)
    if keep is None:
        return eval_loader
    dataset = eval_loader._dataset
    return FullSortEvalDataLoader(eval_loader.config, dataset.copy(dataset.inter_feat[keep]), eval_loader._sampler,
                                  shuffle=False)
