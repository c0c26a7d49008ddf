"""Configuration: which model a name means, and its RecBole ``Config`` with recbole-align's yaml layers.

``build_config`` is the one place where a run's configuration is put together (overall < backbone <
model < dataset < the user's files < config_dict); ``command_line_overrides`` types ``--key=value``
arguments as RecBole types its own command line.
"""

import difflib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import yaml
from recbole.config import Config
from recbole.utils import InputType, ModelType, get_model, get_trainer

from recbole_align.checks import is_integer, is_number
from recbole_align.errors import AlignError
from recbole_align.model.backbone import post_trainable
from recbole_align.model.policy import NextItemPolicy
from recbole_align.registry import MODELS, PROPERTIES_DIR, AlignModel
from recbole_align.trainer import with_align_evaluation


def resolve_model(name):
    """The registered recbole-align model ``name``, else RecBole's model and trainer of that name."""
    if name in MODELS:
        return MODELS[name]
    try:
        model_class = get_model(name)
    except (ValueError, ImportError):  # an unknown name makes RecBole import its optional lightgbm/xgboost models
        raise AlignError(
            f"Unknown model [{name}]: not a recbole-align model ({', '.join(sorted(MODELS))}) "
            f"nor a RecBole model."
        ) from None
    trainer_class = with_align_evaluation(get_trainer(model_class.type, name))
    baseline_file = PROPERTIES_DIR / "baseline" / f"{name}.yaml"  # what RecBole's model needs beyond overall.yaml
    return AlignModel(model_class, trainer_class, baseline_file if baseline_file.is_file() else None)


def backbone_spec(name):
    """The model that BC and post-training train for ``backbone: name``: HSTU, or a RecBole
    sequential model made post-trainable, with its yaml (recbole_align/properties/backbone/<name>.yaml for a
    RecBole model, layered over RecBole's own)."""
    spec = resolve_model(name)
    if spec.on_backbone:
        raise AlignError(f"backbone [{name}] is itself a training method; name a backbone model (HSTU, SASRec, ...).")
    if issubclass(spec.model_class, NextItemPolicy):
        return spec
    config_file = PROPERTIES_DIR / "backbone" / f"{name}.yaml"
    return replace(spec, model_class=post_trainable(spec.model_class), config_file=config_file)


def _mapping(value):
    return isinstance(value, dict)


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")  # RecBole 1.2.1's optimizers

# The keys users set (RecBole's and ours), checked before any data is loaded: (key, test, what it must be).
# (RecBole checks topk itself; a topk above the catalogue is refused once the data is loaded.)
SETTING_CHECKS = (
    ("seed", lambda v: is_integer(v) and 0 <= v < 2**32, "an integer from 0 to 2**32 - 1"),
    ("reproducibility", lambda v: isinstance(v, bool), "True or False"),
    ("use_gpu", lambda v: isinstance(v, bool), "True or False"),
    ("show_progress", lambda v: isinstance(v, bool), "True or False"),
    ("confirm_download", lambda v: isinstance(v, bool), "True or False"),
    ("inter_num_filter", lambda v: v in ("kcore", "once"), "kcore or once"),
    ("state", lambda v: str(v).lower() in LOG_LEVELS, f"a log level ({', '.join(LOG_LEVELS)})"),
    ("worker", lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    ("nproc", lambda v: is_integer(v) and v >= 1, "an integer >= 1"),
    ("learner", lambda v: str(v).lower() in LEARNERS, f"one of {', '.join(LEARNERS)}"),
    ("weight_decay", lambda v: is_number(v) and v >= 0, "a number >= 0"),
    ("embedding_size", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("hidden_size", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("n_layers", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("n_heads", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("dropout_prob", lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("metrics", lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(m, str) for m in v)),
     "a list of metric names, e.g. [\"Hit\", \"NDCG\"]"),
    ("eval_args", _mapping, "a mapping, e.g. {split: {LS: valid_and_test}, order: TO, group_by: user, mode: full}"),
    ("load_col", lambda v: v is None or _mapping(v), "a mapping of file type to columns, e.g. {inter: [user_id, item_id]}"),
    ("train_neg_sample_args", lambda v: v is None or _mapping(v), "a mapping or ~"),
    ("clip_grad_norm", lambda v: v is None or _mapping(v), "a mapping (e.g. {max_norm: 5}) or ~"),
    ("epochs", lambda v: is_integer(v) and v >= 0, "an integer >= 0 (0 only evaluates the starting model)"),
    ("eval_step", is_integer, "an integer (validation every eval_step epochs; <= 0: none)"),
    ("train_batch_size", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("eval_batch_size", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("catalogue_chunk_mb", lambda v: is_number(v) and v > 0, "a number of MiB > 0"),
    ("enable_amp", lambda v: not v, "False (RecBole's fp16 autocast runs without a gradient scaler here; "
     "use mixed_precision: bf16)"),
    ("learning_rate", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("MAX_ITEM_LIST_LENGTH", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("stopping_step", lambda v: is_integer(v) and v >= 0, "an integer >= 0"),
    ("valid_cases", lambda v: v in ("filtered", "all"), "filtered or all"),
    ("eval_rating_threshold", lambda v: v is None or is_number(v), "a number, or ~ for no rating filter"),
    ("reward_noise_std", lambda v: is_number(v) and v >= 0, "a number >= 0 (0: no noise on the training ratings)"),
    ("reward_scope", lambda v: v in ("item", "trajectory"), "item or trajectory"),
    ("trajectory_length", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("num_negatives", lambda v: is_integer(v) and v > 0, "a positive integer (sampled negatives per position)"),
    ("item_updates", lambda v: v in (None, "auto", "dense", "sparse"), "auto, dense or sparse"),
    ("policy_estimator", lambda v: v in (None, "auto", "exact", "sampled"), "auto, exact or sampled"),
    ("policy_tail_samples", lambda v: is_integer(v) and v > 0, "a positive integer (uniform draws per batch)"),
    ("temperature", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("sampling_temperature", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("num_samples", lambda v: is_integer(v) and v >= 2,
     "an integer >= 2 (PPO and GRPO compare the rewards of the num_samples items sampled per context)"),
    ("ppo_epochs", lambda v: is_integer(v) and v > 0, "a positive integer"),
    ("clip_epsilon", lambda v: is_number(v) and v > 0, "a number > 0"),
    ("kl_coef", lambda v: is_number(v) and v >= 0, "a number >= 0 (the weight of the KL penalty)"),
    ("dpo_beta", lambda v: is_number(v) and v > 0, "a number > 0"),
)


def check_values(settings):
    """Refuse a value of SETTING_CHECKS' keys in ``settings`` (a Config or a dict) that RecBole would take and
    fail on later (or run on silently)."""
    for key, valid, what in SETTING_CHECKS:
        if key in settings and not valid(settings[key]):
            raise AlignError(f"{key} must be {what}; got {settings[key]!r}.")


def check_settings(config):
    """check_values of the built ``config``, and a ``valid_metric`` that ``metrics`` and ``topk`` compute
    (for a run that validates)."""
    check_values(config)
    metric, _, k = str(config["valid_metric"]).partition("@")
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if k and k.isdigit() and int(k) not in topk:
        raise AlignError(
            f"valid_metric {config['valid_metric']} needs {k} in topk {config['topk']}: add it (e.g. "
            f"--topk=[{','.join(str(t) for t in sorted({*topk, int(k)}))}]) or choose another, e.g. "
            f"--valid_metric={metric}@{topk[0]}."
        )
    validates = config["epochs"] > 0 and config["eval_step"] > 0
    keys = metric_keys(config["metrics"], topk)
    if validates and str(config["valid_metric"]).lower() not in keys:
        raise AlignError(
            f"valid_metric {config['valid_metric']} is not among what metrics {config['metrics']} compute: "
            f"choose one of {', '.join(sorted(keys))}, or add its metric to metrics."
        )


UNCUT_METRIC_KEYS = {"fullmrr": "mrr", "gauc": "gauc", "auc": "auc", "logloss": "logloss", "mae": "mae", "rmse": "rmse"}


def metric_keys(metrics, topk):
    """The result keys that RecBole's evaluator reports for ``metrics`` (and ``topk``): ``ndcg@10`` for a
    metric cut at K, ``mrr`` for FullMRR, the lower-case name for RecBole's value metrics and GAUC."""
    names = [metrics] if isinstance(metrics, str) else metrics
    keys = set()
    for name in (str(n).lower() for n in names):
        keys |= {UNCUT_METRIC_KEYS[name]} if name in UNCUT_METRIC_KEYS else {f"{name}@{k}" for k in topk}
    return keys


def spec_of(config):
    """The AlignModel that ``config`` (from :func:`build_config` or a checkpoint) trains: its model
    class is the backbone's for BC and the post-training methods."""
    spec = resolve_model(config["model"])
    return replace(spec, model_class=backbone_spec(config["backbone"]).model_class) if spec.on_backbone else spec


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """RecBole Config with recbole-align's yaml first: overall < backbone < model < dataset < the
    user's files < config_dict < command line, built once. BC and the post-training models run on
    the model class named by the ``backbone`` key (default HSTU) and layer their own yaml over the
    backbone's."""
    spec = resolve_model(model)
    user_files = list(config_file_list or [])
    for f in user_files:
        read_property_file(f)
    backbone = None
    if spec.on_backbone:  # the backbone's class and yaml, then the method's yaml over them
        backbone = configured_value("backbone", layer_files(model, dataset) + user_files, config_dict)
        spec = replace(spec, model_class=backbone_spec(backbone).model_class)
    files = layer_files(model, dataset, backbone) + user_files
    config_dict = {**(config_dict or {}), **device_choice(files, config_dict)}
    check_values(config_dict)  # before RecBole reads them (it fails on some, e.g. metrics [1, 2], without naming the key)
    try:
        config = Config(model=spec.model_class, dataset=dataset, config_file_list=files, config_dict=config_dict)
    except (SyntaxError, ValueError, TypeError, AttributeError, KeyError, NotImplementedError) as error:  # RecBole's word on malformed values (an unknown metric: NotImplementedError)
        raise AlignError(f"Bad configuration: {type(error).__name__}: {error}".replace("\n", " ")) from None
    warn_unknown_keys(config, user_files)
    check_settings(config)
    check_method = getattr(spec.trainer_class, "check_config", None)  # a method's own keys, before any data is read
    if check_method is not None:
        check_method(config)
    pairwise = config["MODEL_TYPE"] == ModelType.SEQUENTIAL and config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE
    if pairwise and config["train_neg_sample_args"]["distribution"] == "none":
        raise AlignError(
            f"[{model}] trains with loss_type [{config['loss_type']}], which needs sampled negatives: set "
            f"train_neg_sample_args (e.g. {{distribution: uniform, sample_num: 1}}) or loss_type CE."
        )
    config["model"] = model
    return config, spec


def layer_files(model, dataset, backbone=None):
    """recbole-align's yaml defaults for ``model`` on ``dataset`` that exist, lowest priority first: overall,
    the ``backbone``'s (for BC and the post-training methods, when given), the model's, the dataset's."""
    spec = resolve_model(model)
    model_files = [backbone_spec(backbone).config_file] if spec.on_backbone and backbone else []
    defaults = [PROPERTIES_DIR / "overall.yaml", *model_files, spec.config_file, PROPERTIES_DIR / "dataset" / f"{dataset}.yaml"]
    return [str(f) for f in defaults if f is not None and f.exists()]


def read_property_file(path):
    """The key: value mapping of a user's yaml property file (empty for an empty file), or a one-line error
    naming the file, and the line of a syntax error."""
    if not Path(path).is_file():
        raise AlignError(f"Config file [{path}] does not exist.")
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise AlignError(f"Config file [{path}] is not valid yaml{where}: {what}.") from None
    except UnicodeDecodeError as error:
        raise AlignError(f"Config file [{path}] is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    if content is not None and not isinstance(content, dict):
        raise AlignError(f"Config file [{path}] must hold key: value lines (a yaml mapping), not a {type(content).__name__}.")
    return content or {}


def warn_unknown_keys(config, user_files):
    """A warning line on stderr for each key of the user's files that neither RecBole nor recbole-align knows
    (a typo there is otherwise silently ignored), with the closest known key."""
    known = set(config.internal_config_dict) | {key for group in config.parameters.values() for key in group}
    for path in PROPERTIES_DIR.rglob("*.yaml"):
        known |= set(yaml_keys(path))
    for path in user_files:
        for key in read_property_file(path):
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean [{close[0]}]?" if close else ""
                print(f"recbole-align: warning: [{path}] sets [{key}], which no RecBole or recbole-align code reads{hint}",
                      file=sys.stderr)


def device_choice(files, config_dict):
    """The gpu_id that RecBole's Config must get: it sets CUDA_VISIBLE_DEVICES to gpu_id (default '0'),
    which would override a scheduler's choice, and runs on CUDA whenever gpu_id is not empty, whatever
    use_gpu says. So: '' (the CPU) with use_gpu False; the CUDA_VISIBLE_DEVICES already set when no
    gpu_id is configured; else nothing to change."""
    if configured_value("use_gpu", files, config_dict) is False:
        return {"gpu_id": ""}
    if configured_value("gpu_id", files, config_dict) is None and "CUDA_VISIBLE_DEVICES" in os.environ:
        return {"gpu_id": os.environ["CUDA_VISIBLE_DEVICES"]}
    return {}


def configured_value(key, files, config_dict=None):
    """``key`` as the Config of ``files`` (lowest priority first) and ``config_dict`` will hold it, read
    before building it (e.g. which backbone's yaml to layer in)."""
    if config_dict and key in config_dict:
        return config_dict[key]
    value = None
    for path in files:
        value = read_property_file(path).get(key, value)
    return value


def yaml_keys(path):
    """The top-level keys of the yaml file ``path`` (none if it is None or missing)."""
    return [] if path is None or not Path(path).is_file() else list(read_property_file(path))


def json_safe(config_dict):
    """The config entries that JSON can hold (RecBole's config also holds enums and devices)."""
    safe = {}
    for key, value in config_dict.items():
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        safe[key] = value
    return safe


def command_line_overrides(args):
    """``--key=value`` arguments as a config dict, typed as RecBole types its own command line (and
    ``~`` is None, as in yaml), refusing anything else and a key given twice with different values, as
    RecBole does."""
    overrides = {}
    for arg in args:
        key, equals, value = arg[2:].partition("=")
        if not arg.startswith("--") or not equals or not key:
            raise AlignError(f"Unrecognised argument [{arg}]: give config overrides as --key=value.")
        if overrides.get(key, value) != value:
            raise AlignError(f"Bad configuration: --{key} given twice with different values.")
        overrides[key] = value
    converted = Config._convert_config_dict(None, overrides)  # RecBole's own str -> value conversion
    return {key: None if value == "~" else value for key, value in converted.items()}
