"""A run's identity: everything that shaped its results, recorded in its results JSON (``identity``) and
in its last-epoch state, and checked before a finished run is reused (the BC stage, the experiment
harness) or an interrupted one resumed (``--resume``, the BC stage, the harness):

* ``settings``: its resolved config after every yaml layer (the package's defaults included), less
  RUN_KEYS (where and how it runs, not what it learns) and the keys that only other models' yaml
  files declare (so that one BC serves every method: :func:`foreign_keys`);
* ``data``: the fingerprint of each atomic file of its dataset, by name;
* ``start``: the fingerprint of the checkpoint it started from (a post-training run), else None;
* ``code``: the results version of its code (recbole_align.results_version).

The package version is recorded beside it, for the reader only.
"""

import hashlib
import json
from pathlib import Path

from recbole_align.config import json_safe, layer_files, resolve_model, yaml_keys
from recbole_align.data.fingerprint import ATOMIC_SUFFIXES, file_fingerprint, package_version, path_fingerprint
from recbole_align.registry import MODELS, PROPERTIES_DIR
from recbole_align.results_version import code_version

# Keys that do not change what a run learns or measures: where it runs and writes, how much it logs,
# how its evaluation is batched, what it measures beside training, how many processes share it (a
# resumed run may continue on more), and the paths whose content the identity fingerprints instead.
RUN_KEYS = frozenset((
    "gpu_id", "use_gpu", "device", "state", "checkpoint_dir", "show_progress", "save_dataset",
    "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "log_wandb", "wandb_project",
    "eval_batch_size", "worker", "results_file", "checkpoint_file", "pretrained_checkpoint", "resume", "nproc",
    "world_size", "ip", "port", "offset", "dist_backend", "catalogue_chunk_mb", "single_spec", "local_rank",
    "epoch_test_metrics", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "data_path",
    "valid_neg_sample_args", "test_neg_sample_args", "enable_amp", "metric_decimal_place",
    "avg_reward_generations", "avg_reward_contexts", "loss_decimal_place", "dataset_url", "confirm_download",
))


# Keys added to the package's defaults since runs recorded their identity, with the value that does what
# every run recorded without the key did: such a run is the same run while the key has that value.
# item_updates (2026-12-06): auto is dense, the one way before it, up to 500k items, and no run recorded before
# it had a larger catalogue.
# policy_estimator, policy_tail_samples (2026-12-06): auto is exact, the one way before, up to 100k items.
# inter_num_filter (2026-12-06): kcore is RecBole's filter, the one before.
KEYS_ADDED = {"item_updates": "auto", "policy_estimator": "auto", "policy_tail_samples": 2048, "inter_num_filter": "kcore"}


def yaml_keys_of(paths):
    """The top-level keys of the yaml files ``paths`` that exist."""
    return {key for path in paths for key in yaml_keys(path)}


def foreign_keys(config):
    """The keys of ``config`` that only the yaml files of other recbole-align models declare (e.g.
    ``reward_lambda`` for a BC run given the user's ExpRSFT file): a run never reads them."""
    declared = yaml_keys_of([*PROPERTIES_DIR.rglob("*.yaml"), *(spec.config_file for spec in MODELS.values())])
    own = set(config.internal_config_dict) | yaml_keys_of(layer_files(config["model"], config["dataset"], config["backbone"]))
    return declared - own


def run_settings(config):
    """The ``settings`` of ``config``'s identity, as JSON holds them."""
    ignored = RUN_KEYS | foreign_keys(config)
    settings = {key: value for key, value in json_safe(config.final_config_dict).items() if key not in ignored}
    return json.loads(json.dumps(settings, sort_keys=True))


def settings_digest(config):
    """12 hex digits of :func:`run_settings` (a whole number written 0 or 0.0 alike, as the comparison of
    identities takes them): a name for the settings, e.g. of a BC stage's checkpoint."""
    def canonical(value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {key: canonical(item) for key, item in value.items()}
        return [canonical(item) for item in value] if isinstance(value, list) else value

    text = json.dumps(canonical(run_settings(config)), sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def data_fingerprints(config, cwd="."):
    """{name: fingerprint} of every atomic file ``<dataset>.*`` in the run's data folder (benchmark splits
    included); ``cwd``: the folder a relative ``data_path`` is taken from (the run's working folder)."""
    folder = Path(cwd) / config["data_path"]
    return {p.name: file_fingerprint(p) for p in sorted(folder.glob(f"{config['dataset']}.*")) if p.suffix in ATOMIC_SUFFIXES}


def run_identity(config, cwd=".", start=None):
    """The identity of the run of ``config`` (module docstring); ``start``: the checkpoint a post-training
    run starts from, when not yet in ``config`` (default its ``pretrained_checkpoint``)."""
    start = (start or config["pretrained_checkpoint"]) if resolve_model(config["model"]).post_training else None
    return {
        "settings": run_settings(config),
        "data": data_fingerprints(config, cwd),
        "start": path_fingerprint(Path(cwd) / start) if start else None,
        "code": code_version(),
        "recbole_align": package_version(),
    }


def identity_changes(recorded, current, shown=6):
    """What differs between the ``recorded`` identity of a finished (or interrupted) run and the
    ``current`` one of the run asked for: one phrase per difference (at most ``shown`` settings named),
    none if they are the same run."""
    if recorded is None:
        return ["it was recorded before runs recorded their identity"]
    changes = []
    if recorded["code"] != current["code"]:
        changes.append(f"code {recorded['code']} -> {current['code']}")
    before, now = recorded["settings"], current["settings"]
    before = {**{key: value for key, value in KEYS_ADDED.items() if key in now and key not in before}, **before}
    changed = [key for key in sorted({*before, *now}) if before.get(key, "unset") != now.get(key, "unset")]
    changes += [f"{key} {before.get(key, 'unset')!r} -> {now.get(key, 'unset')!r}" for key in changed[:shown]]
    if len(changed) > shown:
        changes.append(f"{len(changed) - shown} more settings")
    for name in sorted({*recorded["data"], *current["data"]}):
        if recorded["data"].get(name) != current["data"].get(name):
            changes.append(f"{name} {recorded['data'].get(name, 'missing')} -> {current['data'].get(name, 'missing')}")
    if recorded["start"] != current["start"]:
        changes.append(f"start checkpoint {recorded['start']} -> {current['start']}")
    return changes
