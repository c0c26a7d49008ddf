"""Tiny, deterministic checks of the HSTU port: bucketing, padding/batch invariance, causality, losses."""

import pytest
import torch
from recbole.data.interaction import Interaction

from recbole_align.errors import AlignError
from recbole_align.model import hstu
from recbole_align.model.hstu import HSTU, time_bucket
from recbole_align.model.policy import next_step

DAY = 86400.0
MAX_LEN = 8


class FakeDataset:
    def __init__(self, n_items, fields=("item_id_list", "timestamp_list", "rating_list"), ratings=(3.0,)):
        self.n_items = n_items
        self.field2type = dict.fromkeys(fields)
        self.inter_feat = {"rating": torch.tensor(ratings)}

    def num(self, field):
        return self.n_items


def make_model(loss_type="CE", n_items=20, time_field="timestamp", fields=None, seed=0, **overrides):
    config = {
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "TIME_FIELD": time_field,
        "RATING_FIELD": "rating",
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "MAX_ITEM_LIST_LENGTH": MAX_LEN,
        "NEG_PREFIX": "neg_",
        "device": torch.device("cpu"),
        "embedding_size": 8,
        "n_layers": 2,
        "n_heads": 2,
        "attention_dim": 4,
        "linear_dim": 4,
        "dropout_prob": 0.2,
        "num_buckets": 128,
        "temperature": 0.05,
        "num_negatives": 16,
        "negative_sharing": "position",
        "loss_type": loss_type,
        "reward_head": False,
        "reward_loss_weight": 1.0,
        "catalogue_chunk_mb": 512,
        **overrides,
    }
    torch.manual_seed(seed)
    dataset = FakeDataset(n_items) if fields is None else FakeDataset(n_items, fields)
    return HSTU(config, dataset)


def make_batch(histories, times, targets, target_times, width=MAX_LEN, ratings=None):
    """Left-aligned, zero-padded RecBole-style batch; timestamps in float64 as the data pipeline keeps them."""
    items = torch.zeros(len(histories), width, dtype=torch.long)
    stamps = torch.zeros(len(histories), width, dtype=torch.float64)
    for row, (h, t) in enumerate(zip(histories, times)):
        items[row, : len(h)] = torch.tensor(h)
        stamps[row, : len(t)] = torch.tensor(t, dtype=torch.float64)
    data = {
        "item_id_list": items,
        "item_length": torch.tensor([len(h) for h in histories]),
        "timestamp_list": stamps,
        "item_id": torch.tensor(targets),
        "timestamp": torch.tensor(target_times, dtype=torch.float64),
    }
    if ratings is not None:
        data["rating_list"] = torch.tensor(ratings[0], dtype=torch.float32)
        data["rating"] = torch.tensor(ratings[1], dtype=torch.float32)
    return Interaction(data)


def outputs(model, batch):
    return model.sequence_outputs(batch)


def test_time_bucket_values():
    gaps = torch.tensor([0.0, 1.0, DAY, 365 * DAY, 1e100, -DAY], dtype=torch.float64)
    assert time_bucket(gaps).tolist() == [0, 0, 37, 57, 128, 37]
    assert time_bucket(gaps.float()[:4]).tolist() == [0, 0, 37, 57]
    assert time_bucket(torch.tensor([DAY]), num_buckets=10).tolist() == [10]


def test_next_step_shifts_and_writes_target():
    seq = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 7]])
    out = next_step(seq, torch.tensor([3, 4]), torch.tensor([9, 8]))
    assert out.tolist() == [[2, 3, 9, 0], [5, 6, 7, 8]]


def test_outputs_independent_of_padding_and_batch():
    model = make_model().eval()
    user = ([3, 7, 5], [0.0, DAY, 2 * DAY], 9, 3 * DAY)
    longer = ([1, 2, 3, 4, 5, 6, 7], [10.0 * i * DAY for i in range(7)], 8, 80 * DAY)
    other = ([11, 12], [5.0, 500.0], 13, 1e5)
    alone = make_batch([user[0]], [user[1]], [user[2]], [user[3]], width=3)
    mixed = make_batch(*zip(longer, user, other))
    with torch.no_grad():
        assert torch.allclose(outputs(model, alone)[0], outputs(model, mixed)[1, :3], atol=1e-6)
        scores_alone, scores_mixed = model.full_sort_predict(alone), model.full_sort_predict(mixed)
        assert torch.allclose(scores_alone[0], scores_mixed[1], atol=1e-4)
        assert torch.allclose(model.predict(alone)[0], model.predict(mixed)[1], atol=1e-4)
        assert (outputs(model, mixed)[1, 3:] == 0).all()


def test_causality():
    model = make_model().eval()
    times = [float(i) * DAY for i in range(5)]
    before = make_batch([[1, 2, 3, 4, 5]], [times], [6], [5 * DAY])
    after = make_batch([[1, 2, 3, 17, 18]], [times], [6], [5 * DAY])
    with torch.no_grad():
        a, b = outputs(model, before)[0], outputs(model, after)[0]
    assert torch.allclose(a[:3], b[:3], atol=1e-6)
    assert not torch.allclose(a[3:5], b[3:5], atol=1e-4)


def test_all_position_loss_equals_prefix_losses():
    model = make_model("CE").eval()
    items, times = [4, 8, 15, 16, 2], [0.0, 60.0, 3 * DAY, 40 * DAY, 41 * DAY]
    with torch.no_grad():
        whole = make_batch([items[:4]], [times[:4]], [items[4]], [times[4]])
        loss, mask, rating = model.position_losses(whole)
        assert mask.tolist() == [[True] * 4] and rating is None  # trimmed to the longest history
        prefix_losses = []
        for k in range(1, 5):
            pl, _, _ = model.position_losses(make_batch([items[:k]], [times[:k]], [items[k]], [times[k]]))
            prefix_losses.append(pl[0, k - 1])
        assert torch.allclose(loss[0, :4], torch.stack(prefix_losses), atol=1e-5)
        assert torch.allclose(model.calculate_loss(whole), torch.stack(prefix_losses).mean(), atol=1e-5)
        state = model.user_state(whole)
        log_pi = torch.log_softmax(model.catalogue_logits(state), dim=-1)[0, items[4]]
        assert torch.allclose(-log_pi, loss[0, 3], atol=1e-5)


def test_next_ratings_returned_when_present():
    model = make_model("CE").eval()
    ratings = ([[4.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], [3.0])
    batch = make_batch([[1, 2]], [[0.0, 1.0]], [3], [2.0], ratings=ratings)
    _, _, rating = model.position_losses(batch)
    assert rating.tolist() == [[5.0, 3.0]]  # the batch trimmed to its longest history


def test_sampled_softmax_negatives_loss_and_gradients(monkeypatch):
    model = make_model("SSM", n_items=6).train()
    drawn = []
    real_randint = torch.randint

    def spy(*args, **kwargs):
        out = real_randint(*args, **kwargs)
        drawn.append(out)
        return out

    monkeypatch.setattr(hstu.torch, "randint", spy)
    batch = make_batch([[1, 2, 3], [4, 5]], [[0.0, 1.0, 2.0], [0.0, DAY]], [4, 1], [3.0, 2 * DAY])
    loss = model.calculate_loss(batch)
    (negatives,) = drawn
    assert negatives.shape == (5, 16) and negatives.min() >= 1 and negatives.max() <= 5
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_negative_equal_to_positive_is_masked():
    model = make_model("SSM", n_items=2)  # only item 1 exists: every negative is the positive
    batch = make_batch([[1, 1, 1]], [[0.0, 1.0, 2.0]], [1], [3.0])
    loss, _, _ = model.position_losses(batch)
    assert torch.allclose(loss, torch.zeros_like(loss))


def test_missing_timestamp_field_raises():
    with pytest.raises(AlignError, match="HSTU needs a timestamp field"):
        make_model(fields=("item_id_list",))
    with pytest.raises(AlignError, match="HSTU needs a timestamp field"):
        make_model(time_field=None)


def test_relative_bias_uses_offset_and_next_timestamp():
    rab = hstu.RelativeBucketedTimeAndPositionBias(max_len=4, num_buckets=128)
    with torch.no_grad():
        rab.pos_weights.copy_(torch.arange(7.0))
        rab.time_weights.copy_(torch.arange(129.0) * 100)
    time_seq = torch.tensor([[0.0, DAY, 2 * DAY]], dtype=torch.float64)
    next_time = torch.tensor([[DAY, 2 * DAY, 2 * DAY + 365 * DAY]], dtype=torch.float64)
    bias = rab(hstu.time_gap_buckets(time_seq, next_time, 128))[0]
    for i in range(3):
        for j in range(3):
            bucket = time_bucket(next_time[0, i] - time_seq[0, j]).item()
            assert bias[i, j].item() == (j - i + 3) + 100 * bucket
    assert bias[2, 0].item() == 1 + 100 * 57 and bias[0, 0].item() == 3 + 100 * 37


@pytest.mark.parametrize("deterministic", [False, True])  # bincount, or index_put_ (deterministic on CUDA)
def test_bucket_lookup_gradient_equals_indexing(deterministic):
    weights = torch.randn(129, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 129, (3, 7, 7))
    upstream = torch.randn(3, 7, 7, dtype=torch.float64)
    (expected,) = torch.autograd.grad((weights[index] * upstream).sum(), weights)
    torch.use_deterministic_algorithms(deterministic)
    try:
        (actual,) = torch.autograd.grad((hstu._BucketLookup.apply(weights, index) * upstream).sum(), weights)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.allclose(actual, expected)


@pytest.mark.parametrize("n_items", [50, 5000])  # both ways of computing the gradient
def test_sampled_dot_products_and_gradients_equal_dense_ones(n_items):
    states = torch.randn(2100, 4, dtype=torch.float64, requires_grad=True)  # more rows than one chunk
    items = torch.randn(n_items, 4, dtype=torch.float64, requires_grad=True)
    samples = torch.randint(0, n_items, (2100, 3))
    upstream = torch.randn(2100, 3, dtype=torch.float64)
    expected = (states @ items.T).gather(1, samples)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (states, items))
    actual = hstu._SampledDotProducts.apply(states, items, samples)
    actual_grads = torch.autograd.grad((actual * upstream).sum(), (states, items))
    assert torch.allclose(actual, expected)
    assert all(torch.allclose(a, e) for a, e in zip(actual_grads, expected_grads))


@pytest.mark.parametrize("sharing", hstu.NEGATIVE_SHARING)
def test_sampled_negative_logits_follow_the_sharing(sharing):
    mask = torch.tensor([[True, True, True], [True, False, False]])
    states, items = torch.randn(4, 5), torch.randn(30, 5)
    negatives, products = hstu.sampled_negative_logits(states, items, mask, 7, sharing)
    assert negatives.shape == products.shape == (4, 7)
    assert ((negatives >= 1) & (negatives < 30)).all()
    assert torch.allclose(products, (states.unsqueeze(1) * items[negatives]).sum(-1), atol=1e-5)
    if sharing != "position":  # the positions of a history (sequence) or of the batch draw the same items
        assert (negatives[0] == negatives[2]).all()
    if sharing == "batch":
        assert (negatives[0] == negatives[3]).all()


def test_unknown_negative_sharing_is_refused():
    with pytest.raises(AlignError, match="negative_sharing"):
        make_model("SSM", negative_sharing="user")


@pytest.mark.parametrize("loss_type,sharing", [("CE", "position"), *(("SSM", s) for s in hstu.NEGATIVE_SHARING)])
def test_trimming_to_the_longest_history_changes_no_state_loss_or_score(loss_type, sharing, monkeypatch):
    model = make_model(loss_type, negative_sharing=sharing).eval()
    batch = make_batch([[3, 7, 5], [11, 12]], [[0.0, DAY, 2 * DAY], [5.0, 500.0]], [9, 13], [3 * DAY, 1e5],
                       ratings=([[4.0, 5.0, 3.0] + [0.0] * 5, [2.0, 1.0] + [0.0] * 6], [3.0, 4.0]))
    trimmed = model.trimmed(batch)
    assert trimmed["item_id_list"].shape == (2, 3) and trimmed["timestamp_list"].shape == (2, 3)
    assert trimmed["rating_list"].shape == (2, 3) and torch.equal(trimmed["item_id"], batch["item_id"])
    with torch.no_grad():
        assert torch.allclose(outputs(model, trimmed), outputs(model, batch)[:, :3], atol=1e-6)
        torch.manual_seed(1)
        loss, scores = model.calculate_loss(batch), model.full_sort_predict(batch)
        monkeypatch.setattr(model, "trimmed", lambda interaction: interaction)  # the untrimmed window
        torch.manual_seed(1)
        assert torch.allclose(model.calculate_loss(batch), loss, atol=1e-5)
        assert torch.allclose(model.full_sort_predict(batch), scores, atol=1e-4)


def test_user_states_in_length_sorted_chunks_equal_one_pass():
    model = make_model().eval()
    histories = [[3, 7, 5], [11], [1, 2, 3, 4, 5, 6], [8, 9]]
    times = [[float(i) * DAY for i in range(len(h))] for h in histories]
    batch = make_batch(histories, times, [9, 13, 7, 1], [10 * DAY] * 4)
    with torch.no_grad():
        whole = model.user_state(batch)
        model.state_chunk_size = 3  # two chunks: the three shortest histories, then the longest
        assert torch.allclose(model.user_state(batch), whole, atol=1e-6)
