"""Rating-filtered evaluation: the test cases whose held-out item was rated >= a threshold."""

from recbole.data.dataloader import FullSortEvalDataLoader

from recbole_align.errors import AlignError


def rating_filtered_loader(config, eval_loader, phase):
    """A full-sort loader over the cases of ``eval_loader`` whose target rating >= threshold.

    ``eval_rating_threshold: ~`` disables the filter and returns ``eval_loader`` itself. Each row
    of a sequential full-sort loader is one held-out case, so filtering rows and reusing RecBole's
    loader and evaluator gives exactly the metrics restricted to those cases.
    """
    threshold = config["eval_rating_threshold"]
    if threshold is None:
        return eval_loader
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
    filtered = dataset.copy(dataset.inter_feat[keep])
    return FullSortEvalDataLoader(config, filtered, eval_loader._sampler, shuffle=False)
