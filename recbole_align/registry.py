"""Which models recbole-align provides, and how each is trained.

A name maps to the model class, the trainer class and the default yaml under ``properties/model``.
Names not listed fall through to RecBole's own models and trainers (``SASRec``, ``GRU4Rec`` ...),
evaluated by the same rating-filtered evaluator.
"""

from dataclasses import dataclass
from pathlib import Path

PROPERTIES_DIR = Path(__file__).resolve().parent.parent / "properties"


@dataclass(frozen=True)
class AlignModel:
    model_class: type
    trainer_class: type
    config_file: Path


MODELS = {}


def register_model(name, model_class, trainer_class, config_file=None):
    """Make ``name`` runnable by ``run_recbole_align``; the yaml defaults to properties/model/<name>.yaml."""
    MODELS[name] = AlignModel(model_class, trainer_class, Path(config_file or PROPERTIES_DIR / "model" / f"{name}.yaml"))


def _register_builtin_models():
    from recbole_align.model.hstu import HSTU
    from recbole_align.trainer import AlignTrainer

    register_model("HSTU", HSTU, AlignTrainer)


_register_builtin_models()
