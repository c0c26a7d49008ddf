"""RecBole sequential models as post-training backbones (``backbone: SASRec`` ...)."""

import pytest
import torch
from recbole.data.interaction import Interaction
from recbole.model.sequential_recommender import GRU4Rec, NARM, SASRec

from conftest import run_cli, tiny
from recbole_align.compat import load_checkpoint
from recbole_align.errors import AlignError
from recbole_align.model.backbone import post_trainable
from recbole_align.config import backbone_spec

N_ITEMS, MAX_LEN = 30, 8
SASREC_TINY = ("--hidden_size=8", "--inner_size=8", "--n_layers=1")


class FakeDataset:
    def __init__(self):
        self.field2type = {"item_id_list": None, "rating_list": None}
        self.inter_feat = {"rating": torch.tensor([2.0, 4.0])}

    def num(self, field):
        return N_ITEMS


def make_backbone(model_class, reward_head=False, **overrides):
    config = {
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "RATING_FIELD": "rating", "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length", "MAX_ITEM_LIST_LENGTH": MAX_LEN, "NEG_PREFIX": "neg_",
        "device": torch.device("cpu"), "loss_type": "CE", "reward_head": reward_head, "reward_loss_weight": 1.0,
        "catalogue_chunk_mb": 512,
        # SASRec
        "n_layers": 1, "n_heads": 2, "hidden_size": 8, "inner_size": 16, "hidden_dropout_prob": 0.0,
        "attn_dropout_prob": 0.0, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        # GRU4Rec, NARM
        "embedding_size": 8, "dropout_prob": 0.0, "num_layers": 1, "dropout_probs": [0.0, 0.0],
        **overrides,
    }
    torch.manual_seed(0)
    return post_trainable(model_class)(config, FakeDataset()).eval()


def batch(histories, targets, ratings=None):
    items = torch.zeros(len(histories), MAX_LEN, dtype=torch.long)
    for row, history in enumerate(histories):
        items[row, : len(history)] = torch.tensor(history)
    data = {"item_id_list": items, "item_length": torch.tensor([len(h) for h in histories]),
            "item_id": torch.tensor(targets)}
    if ratings is not None:
        data["rating_list"] = torch.tensor(ratings[0], dtype=torch.float32)
        data["rating"] = torch.tensor(ratings[1], dtype=torch.float32)
    return Interaction(data)


@pytest.mark.parametrize("model_class", [SASRec, GRU4Rec])
def test_every_position_outputs_are_causal_and_match_recbole(model_class):
    model = make_backbone(model_class)
    history = [3, 7, 1, 9, 4, 2]
    changed = [3, 7, 1, 12, 4, 2]  # position 3 differs
    outputs = model.sequence_outputs(batch([history, changed], [5, 5]))
    assert torch.allclose(outputs[0, :3], outputs[1, :3], atol=1e-6)
    assert not torch.allclose(outputs[0, 3], outputs[1, 3])
    # every prefix's state is RecBole's own forward on that prefix
    for t in range(1, len(history) + 1):
        prefix = batch([history[:t]], [5])
        recbole_state = model.forward(prefix["item_id_list"], prefix["item_length"])
        assert torch.allclose(outputs[0, t - 1], recbole_state[0], atol=1e-5)


def test_position_losses_are_the_exact_softmax_at_every_position():
    model = make_backbone(SASRec, reward_head=True)
    interaction = batch([[3, 7, 1], [4, 2]], [5, 6], ratings=([[4, 5, 3, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0]], [2, 5]))
    loss, mask, ratings = model.position_losses(interaction)
    assert mask.sum() == 5 and ratings[mask].tolist() == [5, 3, 2, 2, 5]
    outputs = model.sequence_outputs(interaction)
    logits = outputs[0, 1] @ model.item_embedding.weight.T
    logits[0] = float("-inf")
    assert torch.allclose(loss[0, 1], -torch.log_softmax(logits, -1)[1], atol=1e-5)  # position 1 predicts item 1
    assert model.calculate_loss(interaction) > loss.sum() / mask.sum()  # + the reward head's MSE


def test_last_position_backbone_trains_the_last_position_only():
    model = make_backbone(NARM)
    assert not model.all_position_training
    interaction = batch([[3, 7, 1], [4, 2]], [5, 6])
    loss, mask, _ = model.position_losses(interaction)
    assert mask.tolist()[0][:3] == [False, False, True] and mask.sum() == 2
    state = model.forward(interaction["item_id_list"], interaction["item_length"])
    assert torch.allclose(model.user_state(interaction), state)


@pytest.mark.parametrize("name", ["BERT4Rec", "Caser", "ExpRSFT"])
def test_backbones_that_cannot_be_post_trained_are_refused(name):
    with pytest.raises(AlignError, match=rf"backbone \[{name}\]"):
        backbone_spec(name)


@pytest.mark.slow
def test_sasrec_backbone_bc_then_post_training_cli(tmp_path, ml100k_slice):
    common = ("--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", "--backbone=SASRec")
    args = tiny(*SASREC_TINY)
    process, bc = run_cli(tmp_path, "--model=BC", *common, *tiny(*SASREC_TINY, "--epochs=2"), "--reward_head=True")
    assert process.returncode == 0, process.stderr[-3000:]
    assert bc["config"]["backbone"] == "SASRec" and bc["avg_reward"] > 0
    assert bc["n_test"] == 60 and bc["epochs_run"] == 2
    for method in ("DRPO", "PPO"):
        process, results = run_cli(
            tmp_path, f"--model={method}", *common, *args, f"--pretrained_checkpoint={bc['checkpoint']}"
        )
        assert process.returncode == 0, process.stderr[-3000:]
        assert results["config"]["hidden_size"] == 8 and results["config"]["reward_head"] is True
        trained = load_checkpoint(results["checkpoint"])["state_dict"]
        start = load_checkpoint(bc["checkpoint"])["state_dict"]
        moved = [key for key in start if not torch.equal(start[key], trained[key])]
        assert "item_embedding.weight" in moved  # the method trained the SASRec backbone
    # an HSTU run refuses the SASRec checkpoint
    process, _ = run_cli(tmp_path, "--model=ExpRSFT", *common[:2], *tiny(), f"--pretrained_checkpoint={bc['checkpoint']}")
    assert process.returncode == 2 and "SASRec" in process.stderr and "Traceback" not in process.stderr


@pytest.mark.parametrize("model_class", [SASRec, GRU4Rec, NARM])
def test_trimming_to_the_longest_history_changes_no_state_or_loss(model_class, monkeypatch):
    model = make_backbone(model_class)
    interaction = batch([[3, 7, 1], [4, 2]], [5, 6])
    assert model.trimmed(interaction)["item_id_list"].shape == (2, 3)
    loss, scores = model.calculate_loss(interaction), model.full_sort_predict(interaction)
    monkeypatch.setattr(model, "trimmed", lambda interaction: interaction)  # the untrimmed window
    assert torch.allclose(model.calculate_loss(interaction), loss, atol=1e-5)
    assert torch.allclose(model.full_sort_predict(interaction), scores, atol=1e-4)
