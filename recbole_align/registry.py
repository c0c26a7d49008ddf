"""Which models recbole-align provides, and how each is trained.

A name maps to the model class, the trainer class and the default yaml under ``recbole_align/properties/model``.
``BC`` and the post-training methods run on the model named by the ``backbone`` config key (HSTU,
or a RecBole sequential model made post-trainable by :mod:`recbole_align.model.backbone`).
Names not listed fall through to RecBole's own models and trainers (``SASRec``, ``GRU4Rec`` ...),
evaluated by the same rating-filtered evaluator.
"""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PROPERTIES_DIR = Path(str(resources.files("recbole_align") / "properties"))  # the yaml defaults, package data


@dataclass(frozen=True)
class AlignModel:
    model_class: type
    trainer_class: type
    config_file: Path
    post_training: bool = False  # starts from a BC checkpoint of its backbone
    on_backbone: bool = False  # runs on the ``backbone`` model class, not on model_class


MODELS = {}


def register_model(name, model_class, trainer_class, config_file=None, post_training=False, on_backbone=None):
    """Make ``name`` runnable by ``run_recbole_align``; the yaml defaults to recbole_align/properties/model/<name>.yaml.

    A ``post_training`` model starts from the BC checkpoint named by ``pretrained_checkpoint`` or,
    when none is given, from one trained (or reused) by the same run. An ``on_backbone`` model
    (default: the post-training ones) trains the class named by the ``backbone`` config key.
    """
    config_file = Path(config_file or PROPERTIES_DIR / "model" / f"{name}.yaml")
    on_backbone = post_training if on_backbone is None else on_backbone
    MODELS[name] = AlignModel(model_class, trainer_class, config_file, post_training, on_backbone)


def _register_builtin_models():
    from recbole_align.model.hstu import HSTU
    from recbole_align.trainer import AlignTrainer
    from recbole_align.trainer.dpo import DPOTrainer
    from recbole_align.trainer.grpo import GRPOTrainer
    from recbole_align.trainer.ppo import PPOTrainer
    from recbole_align.trainer.reward_weighted import RewardWeightedTrainer

    register_model("HSTU", HSTU, AlignTrainer)
    register_model("BC", HSTU, AlignTrainer, on_backbone=True)  # behaviour cloning of the backbone
    for name in ("ExpRSFT", "RSFT", "DRPO", "ContinuedBC"):
        register_model(name, HSTU, RewardWeightedTrainer, post_training=True)
    register_model("PPO", HSTU, PPOTrainer, post_training=True)
    register_model("DPO", HSTU, DPOTrainer, post_training=True)
    register_model("GRPO", HSTU, GRPOTrainer, post_training=True)


_register_builtin_models()
