"""Stages planned once: a command (model, dataset, config files, overrides) becomes an immutable
:class:`Plan` of stages, the BC stage when a post-training run needs one trained, then the run, each
with its finished RecBole ``Config`` and resolved model.

What a stage's configuration depends on is settled here, before its ``Config`` is built: the BC
checkpoint a resumed run continues from, the BC stage's checkpoint (reused only when what it learned
from is unchanged), the architecture of the checkpoint a post-training run starts from, a
multi-process run's checkpoint name and world size. Nothing edits a planned config afterwards (a
process of a multi-process run joins its group as RecBole's ``Config`` does, in ``compat``).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from recbole.utils import get_local_time

from recbole_align.config import backbone_spec, build_config, json_safe, yaml_keys
from recbole_align.data import stale_inputs
from recbole_align.pretrained import architecture_of, check_start, read_pretrained, resumed_settings, stale_last_state
from recbole_align.registry import AlignModel
from recbole_align.trainer.align_trainer import last_state_file

# What a BC stage learns from, besides its data files and the package version (data.fingerprint): the
# keys of its reuse key. Every key a BC Config holds is in this list or in BC_RUN_KEYS
# (tests/test_stages.py checks it), so that a new key cannot be forgotten.
BC_TRAINING_KEYS = (
    # data: which interactions, fields and split
    "dataset", "data_path", "load_col", "unload_col", "unused_col", "additional_feat_suffix", "rm_dup_inter",
    "val_interval", "filter_inter_by_user_or_item", "user_inter_num_interval", "item_inter_num_interval",
    "alias_of_user_id", "alias_of_item_id", "alias_of_entity_id", "alias_of_relation_id", "preload_weight",
    "normalize_field", "normalize_all", "discretization", "threshold", "field_separator", "seq_separator",
    "USER_ID_FIELD", "ITEM_ID_FIELD", "RATING_FIELD", "TIME_FIELD", "LABEL_FIELD", "NEG_PREFIX",
    "HEAD_ENTITY_ID_FIELD", "TAIL_ENTITY_ID_FIELD", "RELATION_ID_FIELD", "ENTITY_ID_FIELD", "seq_len",
    "benchmark_filename", "MAX_ITEM_LIST_LENGTH", "ITEM_LIST_LENGTH_FIELD", "LIST_SUFFIX", "POSITION_FIELD",
    "eval_args", "repeatable", "kg_reverse_r", "entity_kg_num_interval", "relation_kg_num_interval",
    "numerical_features", "transform",
    # model
    "model", "backbone", "embedding_size", "hidden_size", "inner_size", "n_layers", "n_heads", "attention_dim",
    "linear_dim", "dropout_prob", "attn_dropout_prob", "hidden_dropout_prob", "hidden_act", "layer_norm_eps",
    "initializer_range", "loss_type", "num_layers", "temperature", "num_negatives", "num_buckets", "negative_sharing",
    "reward_head", "reward_loss_weight", "reward_noise_std",
    # training
    "seed", "reproducibility", "epochs", "train_batch_size", "learner", "learning_rate", "weight_decay",
    "optimizer_betas", "clip_grad_norm", "train_neg_sample_args", "stopping_step", "eval_step", "valid_metric",
    "valid_metric_bigger", "valid_cases", "eval_rating_threshold", "metrics", "topk", "mixed_precision",
    "length_grouped_batches", "length_group_size", "enable_scaler", "require_pow", "shuffle",
)

# Keys that do not change what a BC stage learns: where it runs and writes, how much it logs, how its
# evaluation is batched and what it measures beside training.
BC_RUN_KEYS = (
    "gpu_id", "use_gpu", "device", "state", "checkpoint_dir", "show_progress", "save_dataset",
    "dataset_save_path", "save_dataloaders", "dataloaders_save_path", "log_wandb", "wandb_project",
    "eval_batch_size", "worker", "results_file", "checkpoint_file", "pretrained_checkpoint", "resume", "nproc",
    "world_size", "ip", "port", "offset", "dist_backend", "catalogue_chunk_mb", "single_spec", "local_rank",
    "epoch_test_metrics", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
    "valid_neg_sample_args", "test_neg_sample_args", "enable_amp", "metric_decimal_place",
    "avg_reward_generations", "avg_reward_contexts", "loss_decimal_place",
)


@dataclass(frozen=True)
class Stage:
    """One training run of a plan: its finished ``config`` and ``spec`` (model and trainer classes),
    ``notes`` (log lines of what the plan settled, e.g. an adopted architecture key) and, for a BC
    stage, ``publish``: where its checkpoint goes once it has finished (it trains as ``.partial.pth``,
    never reused before)."""

    config: object
    spec: AlignModel
    notes: tuple = ()
    publish: Path | None = None


@dataclass(frozen=True)
class Plan:
    stages: tuple

    @property
    def run(self):
        """The stage the command asked for (the last)."""
        return self.stages[-1]


def plan_run(model, dataset, config_file_list=None, config_dict=None):
    """The :class:`Plan` of ``model`` on ``dataset`` with the user's ``config_file_list`` and ``config_dict``
    (RecBole's layers, see config.build_config): a post-training run without ``pretrained_checkpoint``
    starts from the BC stage's checkpoint (:func:`plan_bc_stage`), trained first unless a fresh one exists."""
    files, given = list(config_file_list or []), dict(config_dict or {})
    config, spec = build_config(model, dataset, files, given)
    settled, notes, stages = {}, [], []
    if config["resume"]:
        settled.update(resumed_settings(config))
    if spec.post_training:
        start = settled.get("pretrained_checkpoint") or config["pretrained_checkpoint"]
        if start:
            start_config = read_pretrained(start)["config"]
        else:
            bc_stage, start, note = plan_bc_stage(config, spec, files, given)
            stages += [bc_stage] if bc_stage else []
            start_config = bc_stage.config if bc_stage else read_pretrained(start)["config"]
            notes.append(note)
        check_start(start_config, start, config)
        settled["pretrained_checkpoint"] = str(start)
        for key, adopted in architecture_of(start_config).items():
            if config[key] != adopted:
                settled[key] = adopted
                notes.append(f"{key} = {adopted!r} from the pretrained checkpoint (config said {config[key]!r})")
    settled.update(process_settings(config))
    if settled:
        config, spec = build_config(model, dataset, files, {**given, **settled})
    return Plan((*stages, Stage(config, spec, tuple(notes))))


def plan_bc_stage(config, spec, files, given):
    """(the BC stage, or None when a fresh checkpoint is reused; its checkpoint path; a log line) of the
    post-training run of ``config`` (``spec``): BC of the backbone on the same data and config, with a reward head if
    the method's trainer ``requires_reward_head``, saved as ``<checkpoint_dir>/<backbone>-<dataset>-bc-<key>.pth``
    (:func:`bc_key`), reused while its data files and the package version are unchanged; an interrupted
    BC stage resumes from its last validated epoch, unless those inputs changed since."""
    backbone, dataset = config["backbone"], config["dataset"]
    bc_dict = {**given, "pretrained_checkpoint": None, "results_file": None, "resume": None}
    if getattr(spec.trainer_class, "requires_reward_head", False):
        bc_dict["reward_head"] = True
    bc_config, _ = build_config("BC", dataset, files, bc_dict)
    path = Path(bc_config["checkpoint_dir"]) / f"{backbone}-{dataset}-bc-{bc_key(bc_config)}.pth"
    notes = []
    if path.is_file():
        changes = stale_inputs(path.with_suffix(".json"))
        if not changes:
            return None, path, f"BC stage: reusing {path}"
        notes.append(f"BC stage: not reusing {path}: {'; '.join(changes)}")
    partial = path.with_suffix(".partial.pth")
    last = Path(last_state_file(partial))
    resume = last.is_file()
    if resume and (changes := stale_last_state(last)):
        notes.append(f"BC stage: not resuming {last}: {'; '.join(changes)}")
        resume = False
    bc_dict.update(process_settings(bc_config))
    bc_dict.update(checkpoint_file=str(partial), results_file=str(path.with_suffix(".json")),
                   resume=str(last) if resume else None)
    bc_config, bc_spec = build_config("BC", dataset, files, bc_dict)
    if bc_config["resume"]:
        resumed_settings(bc_config)  # checked as a resumed run's
    notes.append(f"BC stage: training {backbone} by behaviour cloning -> {path}")
    return Stage(bc_config, bc_spec, tuple(notes), path), path, f"{config['model']} stage: post-training from {path}"


def bc_key(bc_config):
    """12 hex digits of what ``bc_config`` learns from: its BC_TRAINING_KEYS, and the keys its backbone
    declares (``architecture_keys`` and its yaml's, e.g. those of a model registered by a user).
    ``reward_noise_std`` is one of them only when the BC trains a reward head (the one part of BC that
    reads the noisy training ratings) and is not 0 (so the keys of runs without noise are those of before
    the key existed)."""
    backbone = backbone_spec(bc_config["backbone"])
    keys = {*BC_TRAINING_KEYS, *getattr(backbone.model_class, "architecture_keys", ()), *yaml_keys(backbone.config_file)}
    if not (bc_config["reward_head"] and bc_config["reward_noise_std"]):
        keys.discard("reward_noise_std")
    values = {k: v for k, v in json_safe(bc_config.final_config_dict).items() if k in keys}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def process_settings(config):
    """What the processes of a multi-process run (none else) must agree on before they start: the world
    size (default ``nproc``) and the checkpoint's name (every process loads the best model saved there)."""
    if not multi_process(config):
        return {}
    return {
        "world_size": config["world_size"] if config["world_size"] > 0 else config["nproc"],
        "checkpoint_file": config["checkpoint_file"] or str(
            Path(config["checkpoint_dir"]) / f"{config['model']}-{get_local_time()}.pth"
        ),
    }


def multi_process(config):
    """Whether ``config`` runs in several processes (``nproc`` > 1, or a ``world_size`` across machines)."""
    return config["single_spec"] and (config["nproc"] > 1 or config["world_size"] > 0)
