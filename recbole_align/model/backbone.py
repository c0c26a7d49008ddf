"""RecBole's own sequential models as post-training backbones (``backbone: SASRec`` ...).

:func:`post_trainable` subclasses a RecBole model into a :class:`NextItemPolicy`, without
changing its network or its weights' names: pi(a|s) = softmax_a(h_s . e_a), the dot product that
RecBole's CE loss and ``full_sort_predict`` use. Models whose encoder is causal (the output at
position t sees items 0..t only) are trained at every position of one sequence per user, like
HSTU; any other model whose ``forward(item_seq, item_seq_len)`` returns the user state is trained
at the last position of RecBole's per-prefix samples.
"""

import inspect
from pathlib import Path

import recbole
import torch
import yaml
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import ModelType, get_model

from recbole_align.errors import AlignError
from recbole_align.model.policy import NextItemPolicy

# RecBole models whose forward ends in gather_indexes(outputs [B, L, d], item_seq_len - 1) on a causal
# encoder, so that the ungathered outputs are the states at every position (tests check causality)
EVERY_POSITION_MODELS = {"SASRec", "GRU4Rec"}


class RecBoleBackbone(NextItemPolicy):
    """A RecBole sequential model as a policy; the subclass made by :func:`post_trainable` sets
    ``every_position`` and ``architecture_keys`` (the RecBole model's yaml keys, the window and the
    reward head: what a post-training run takes from its BC checkpoint)."""

    every_position = True

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self._ungathered = False
        self.init_policy(config, dataset, self.item_embedding.embedding_dim)

    def gather_indexes(self, output, gather_index):
        """RecBole's last-position gather, skipped while :meth:`sequence_outputs` asks for every position."""
        return output if self._ungathered else super().gather_indexes(output, gather_index)

    def sequence_outputs(self, interaction):
        """States [B, L, d]: the model's outputs at every position, or (last-position models) its
        user state at position item_length - 1 and zeros elsewhere."""
        item_seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if not self.every_position:
            states = self.forward(item_seq, seq_len)
            outputs = states.new_zeros(*item_seq.shape, states.size(-1))
            return outputs.index_put((torch.arange(len(seq_len), device=seq_len.device), seq_len - 1), states)
        self._ungathered = True
        try:
            return self.forward(item_seq, seq_len)
        finally:
            self._ungathered = False

    def position_mask(self, item_seq, seq_len):
        """Every valid position, or only the last one for a last-position model."""
        if self.every_position:
            return super().position_mask(item_seq, seq_len)
        return torch.arange(item_seq.size(1), device=item_seq.device) == (seq_len - 1).unsqueeze(1)

    def item_vectors(self, items=None):
        """The item embedding table [n_items, d] (row 0 is padding), or its rows of ``items`` [...] -> [..., d]."""
        return self.item_embedding.weight if items is None else self.item_embedding.weight[items]

    logit_scale = 1.0  # logits are h_s . e_a, as RecBole's CE loss and full_sort_predict


_POST_TRAINABLE = {}
PREFIX = "PostTrainable"


def post_trainable(model_class):
    """The :class:`RecBoleBackbone` subclass of the RecBole sequential ``model_class`` (one per class,
    same name, so that RecBole still loads the model's own yaml), or an AlignError if it cannot be one."""
    if model_class in _POST_TRAINABLE:
        return _POST_TRAINABLE[model_class]
    name = model_class.__name__
    parameters = list(inspect.signature(model_class.forward).parameters)
    if (
        getattr(model_class, "type", None) != ModelType.SEQUENTIAL
        or not issubclass(model_class, SequentialRecommender)
        or parameters != ["self", "item_seq", "item_seq_len"]
    ):
        raise AlignError(
            f"backbone [{name}] cannot be post-trained: it must be a RecBole sequential model whose "
            f"forward(item_seq, item_seq_len) returns the user state (e.g. SASRec, GRU4Rec, NARM), or HSTU."
        )
    model_yaml = Path(recbole.__file__).parent / "properties" / "model" / f"{name}.yaml"
    own_keys = tuple(yaml.safe_load(model_yaml.read_text()) or {}) if model_yaml.is_file() else ()
    every_position = name in EVERY_POSITION_MODELS
    attributes = {
        "every_position": every_position,
        "all_position_training": every_position,
        "architecture_keys": (*own_keys, "MAX_ITEM_LIST_LENGTH", "reward_head"),
        "__doc__": f"RecBole's {name} as a post-trainable policy (see recbole_align.model.backbone).",
        "__module__": __name__,
        "__qualname__": f"{PREFIX}{name}",  # module attribute (see __getattr__): checkpoints pickle the class
    }
    _POST_TRAINABLE[model_class] = type(name, (RecBoleBackbone, model_class), attributes)
    return _POST_TRAINABLE[model_class]


def __getattr__(attribute):
    """``PostTrainable<Model>``: the class :func:`post_trainable` makes of RecBole's <Model>."""
    if attribute.startswith(PREFIX):
        return post_trainable(get_model(attribute[len(PREFIX):]))
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
