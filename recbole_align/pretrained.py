"""Loading the behaviour-cloning (BC) checkpoint that every post-training method starts from, and
checking the last-epoch state that a resumed run continues."""

import json
from pathlib import Path

from safetensors.torch import load_file

from recbole_align.compat import load_checkpoint
from recbole_align.config import build_config, spec_of
from recbole_align.errors import AlignError
from recbole_align.identity import identity_changes, run_identity

WEIGHTS, CONFIG = "model.safetensors", "config.json"  # an exported model's folder (recbole_align.export)


def read_pretrained(checkpoint_path, key="pretrained_checkpoint"):
    """The checkpoint dict (config, state_dict, ...) at ``checkpoint_path`` (a ``.pth``, or a folder written
    by ``recbole-align export``, read without unpickling), or a clear error that names the config ``key``
    it came from."""
    path = Path(checkpoint_path)
    if path.is_dir():
        return read_exported(path)
    if not path.is_file():
        raise AlignError(f"{key} [{path}] does not exist.")
    try:
        checkpoint = load_checkpoint(path)
        checkpoint["config"]["model"], checkpoint["state_dict"].items()
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise AlignError(f"{key} [{path}] is not a readable RecBole checkpoint ({error}).") from None
    return checkpoint


def read_exported(folder):
    """The checkpoint dict (config: a RecBole Config built from config.json, state_dict) of an exported
    ``folder``, read without unpickling."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / CONFIG).is_file():
        raise AlignError(f"[{folder}] is a folder but not an exported model (it needs {WEIGHTS} and {CONFIG}).")
    saved = json.loads((folder / CONFIG).read_text())
    config, _ = build_config(saved["model"], saved["dataset"], config_dict={**saved["config"], "state": "ERROR"})
    return {"config": config, "state_dict": load_file(folder / WEIGHTS), "other_parameter": None}


# what belongs to the machine or the run that wrote the checkpoint, or is derived by RecBole's Config again
MACHINE_KEYS = {
    "device", "data_path", "checkpoint_dir", "gpu_id", "use_gpu", "single_spec", "local_rank", "nproc", "world_size",
    "offset", "ip", "port", "dist_backend", "results_file", "checkpoint_file", "pretrained_checkpoint", "resume",
    "config_file", "dataset_save_path", "dataloaders_save_path", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
    "valid_neg_sample_args", "test_neg_sample_args", "eval_neg_sample_args", "model", "dataset",
}


def plain_config(config):
    """The entries of a RecBole Config that JSON holds as they are, without the MACHINE_KEYS: what another
    machine rebuilds the Config from."""
    plain = {}
    for key, value in config.final_config_dict.items():
        if key in MACHINE_KEYS:
            continue
        if key == "train_neg_sample_args" and value and value.get("distribution") == "none":
            value = None  # RecBole's expanded form of "no negative sampling", which it takes back only as ~
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue
        plain[key] = value
    return plain


def config_on_this_machine(saved_config, data_path=None):
    """The RecBole Config of a checkpoint's ``saved_config`` built again here, in one process on this
    machine's device, reading its data from ``data_path`` (the folder that holds ``<dataset>/``; default:
    where the run read it)."""
    folder = data_path or (Path(saved_config["data_path"]).parent if saved_config["data_path"] else None)
    config_dict = {**plain_config(saved_config), **({"data_path": str(folder)} if folder else {})}
    return build_config(saved_config["model"], saved_config["dataset"], config_dict=config_dict)[0]


def resumed_settings(config):
    """Refuse a ``resume`` file that cannot continue the run of ``config``: not a last-epoch state
    (``<checkpoint>.last.pth``), another model or dataset, another BC checkpoint or checkpoint_file,
    or a best checkpoint gone missing. Returns what the resumed run settles: a post-training run
    without ``pretrained_checkpoint`` takes the resumed run's."""
    path = config["resume"]
    state = read_pretrained(path, "resume")
    if "resume" not in state:
        raise AlignError(
            f"resume [{path}] holds no training state: give the <checkpoint>.last.pth file written next "
            f"to the checkpoint."
        )
    saved_config, best = state["config"], state["resume"]["best_checkpoint"]
    ran, runs = (saved_config["model"], saved_config["dataset"]), (config["model"], config["dataset"])
    if ran != runs:
        raise AlignError(f"resume [{path}] is a run of [{ran[0]}] on [{ran[1]}], not of [{runs[0]}] on [{runs[1]}].")
    if spec_of(saved_config).model_class is not spec_of(config).model_class:
        raise AlignError(f"resume [{path}] trained backbone [{saved_config['backbone']}], not [{config['backbone']}].")
    for key, resumed in (("pretrained_checkpoint", saved_config["pretrained_checkpoint"]), ("checkpoint_file", best)):
        if config[key] and str(config[key]) != str(resumed):
            raise AlignError(f"resume [{path}] continues a run with {key} [{resumed}], not [{config[key]}].")
    if not Path(best).is_file():
        raise AlignError(f"resume [{path}]: the run's best checkpoint [{best}] is missing.")
    return {} if config["pretrained_checkpoint"] else {"pretrained_checkpoint": saved_config["pretrained_checkpoint"]}


def resume_changes(state, config, cwd="."):
    """How the run of the last-epoch ``state`` (of a ``.last.pth``) differs from the run of ``config``
    (identity.identity_changes: settings, data, start checkpoint, code; a state without an identity, saved
    by an earlier version, is another run); none when ``config`` continues it."""
    return identity_changes(state["resume"].get("identity"), run_identity(config, cwd))


def check_resumed(config):
    """Refuse to resume the planned run of ``config`` from its ``resume`` state when they are not the same
    run (:func:`resume_changes`), but for a larger ``epochs``: the run trains on, as if it had been given
    that budget from the start."""
    state = read_pretrained(config["resume"], "resume")
    recorded = state["resume"].get("identity")
    if recorded is not None and config["epochs"] >= recorded["settings"].get("epochs", config["epochs"]):
        state["resume"]["identity"] = {**recorded, "settings": {**recorded["settings"], "epochs": config["epochs"]}}
    changes = resume_changes(state, config)
    if changes:
        raise AlignError(f"resume [{config['resume']}] is another run ({'; '.join(changes)}): run without --resume "
                         f"to train afresh as the run is set now.")


def stale_last_state(path, config, cwd="."):
    """Why the last-epoch state at ``path`` (a ``.last.pth``) cannot continue the run of ``config``: it is
    another run (resume_changes), or it cannot be read (e.g. cut short by a crash while saved); [] when it can."""
    try:
        state = read_pretrained(path, "resume")
    except AlignError as error:
        return [f"it cannot be read ({error})"]
    return resume_changes(state, config, cwd) if "resume" in state else ["it holds no training state"]


def check_start(saved_config, path, config):
    """Refuse to start the run of ``config`` from the checkpoint at ``path`` (whose config is
    ``saved_config``) when it holds another model class or was trained on another dataset."""
    saved_class, model_class = spec_of(saved_config).model_class, spec_of(config).model_class
    if saved_class is not model_class:
        raise AlignError(
            f"pretrained_checkpoint [{path}] holds a [{saved_config['model']}] model ({saved_class.__name__}); "
            f"[{config['model']}] post-trains a {model_class.__name__}."
        )
    if saved_config["dataset"] != config["dataset"]:
        raise AlignError(
            f"pretrained_checkpoint [{path}] was trained on dataset [{saved_config['dataset']}], "
            f"not [{config['dataset']}]."
        )


def architecture_of(saved_config):
    """{key: value} of the ``architecture_keys`` of the model that ``saved_config`` (a checkpoint's) trains:
    the settings a model must be built with to take its weights (e.g. a reward head)."""
    return {key: saved_config[key] for key in getattr(spec_of(saved_config).model_class, "architecture_keys", ())}


def load_pretrained(model, checkpoint, config):
    """Load the weights of ``checkpoint`` (built with its :func:`architecture_of`) into ``model``,
    refusing one whose tensors do not fit (another item catalogue or backbone config)."""
    path = config["pretrained_checkpoint"]
    saved_config, state_dict = checkpoint["config"], checkpoint["state_dict"]
    own_state = model.state_dict()
    for name, tensor in state_dict.items():
        if name in own_state and own_state[name].shape != tensor.shape:
            raise AlignError(
                f"pretrained_checkpoint [{path}] does not fit this model: [{name}] has shape "
                f"{tuple(tensor.shape)} there and {tuple(own_state[name].shape)} here (a different "
                f"item catalogue or backbone config)."
            )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise AlignError(
            f"pretrained_checkpoint [{path}] does not fit this model: missing {missing}, unexpected {unexpected}."
        )
    return saved_config
