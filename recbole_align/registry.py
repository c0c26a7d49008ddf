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
    post_training: bool = False  # starts from a BC checkpoint of its backbone


MODELS = {}


def register_model(name, model_class, trainer_class, config_file=None, post_training=False):
    """Make ``name`` runnable by ``run_recbole_align``; the yaml defaults to properties/model/<name>.yaml.

    A ``post_training`` model starts from the BC checkpoint named by ``pretrained_checkpoint`` or,
    when none is given, from one trained (or reused) by the same run.
    """
    config_file = Path(config_file or PROPERTIES_DIR / "model" / f"{name}.yaml")
    MODELS[name] = AlignModel(model_class, trainer_class, config_file, post_training)


def _register_builtin_models():
    from recbole_align.model.hstu import HSTU
    from recbole_align.trainer import AlignTrainer
    from recbole_align.trainer.dpo import DPOTrainer
    from recbole_align.trainer.ppo import PPOTrainer
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer

    register_model("HSTU", HSTU, AlignTrainer)
    for name in ("ExpRSFT", "RSFT", "DRPO"):
        register_model(name, HSTU, RewardWeightedTrainer, post_training=True)
    register_model("PPO", HSTU, PPOTrainer, post_training=True)
    register_model("DPO", HSTU, DPOTrainer, post_training=True)


_register_builtin_models()
