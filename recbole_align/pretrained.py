"""Loading the behaviour-cloning (BC) checkpoint that every post-training method starts from."""

from pathlib import Path

from recbole_align.compat import load_checkpoint
from recbole_align.errors import AlignError


def load_pretrained(model, checkpoint_path, config):
    """Load the weights of ``checkpoint_path`` into ``model``, refusing a checkpoint of another
    model class, dataset or item catalogue with a message that says which."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise AlignError(f"pretrained_checkpoint [{path}] does not exist.")
    try:
        checkpoint = load_checkpoint(path)
        saved_config, state_dict = checkpoint["config"], checkpoint["state_dict"]
    except Exception as error:  # torch raises many types for a corrupt or foreign file
        raise AlignError(f"pretrained_checkpoint [{path}] is not a readable RecBole checkpoint ({error}).") from None
    from recbole_align.quick_start import resolve_model

    saved_class = resolve_model(saved_config["model"]).model_class
    if saved_class is not type(model):
        raise AlignError(
            f"pretrained_checkpoint [{path}] holds a [{saved_config['model']}] model ({saved_class.__name__}); "
            f"[{config['model']}] post-trains a {type(model).__name__}."
        )
    if saved_config["dataset"] != config["dataset"]:
        raise AlignError(
            f"pretrained_checkpoint [{path}] was trained on dataset [{saved_config['dataset']}], "
            f"not [{config['dataset']}]."
        )
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
