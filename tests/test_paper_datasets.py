"""The settings of the paper's datasets (properties/ml-1m.yaml, ml-20m.yaml, amazon-books.yaml, netflix.yaml):
each loads generated data in the layout of RecBole's files for that dataset and gives the users, items,
ratings and rated-4.5 test cases that its filtering promises (computed here independently, with pandas)."""

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_atomic

from recbole_align.config import build_config
from recbole_align.data import AlignDataset, load_dataset, split_loaders
from recbole_align.evaluator.filtering import rating_filter

DATASETS = ("ml-1m", "ml-20m", "amazon-books", "netflix")


@pytest.fixture(autouse=True)
def no_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # RecBole's Config reads sys.argv


def ratings_frame(name, n_users=60, n_items=50, seed=0):
    """Ratings in the layout of RecBole's file for ``name``: stars 1..5 (half stars for ml-20m), a timestamp a
    day; users with 2..20 ratings and some items rated once or twice, so that the 5-rating filters bite."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        length = int(rng.integers(2, 21))
        items = rng.choice(np.arange(1, n_items + 1), size=length, replace=False, p=popularity(n_items))
        stars = rng.integers(1, 11, size=length) / 2 if name == "ml-20m" else rng.integers(1, 6, size=length)
        rows += [(user, int(item), float(star), 1_000_000_000 + 86_400 * step + user)
                 for step, (item, star) in enumerate(zip(items, stars))]
    return pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])


def popularity(n_items):
    weights = 1 / (np.arange(n_items) + 3.0)
    return weights / weights.sum()


def reference_filter(frame, least=5):
    """The HSTU reference's Amazon preprocessing: the ratings of items and users with fewer than ``least`` ratings
    in the raw file dropped at once, then the users left with fewer than ``least``."""
    users, items = frame["user_id:token"], frame["item_id:token"]
    kept = frame[items.map(items.value_counts()).ge(least) & users.map(users.value_counts()).ge(least)]
    left = kept["user_id:token"]
    return kept[left.map(left.value_counts()).ge(least)]


def expected_counts(name, frame):
    """(users, items, ratings, test cases rated >= 4.5) the settings promise for ``frame``."""
    if name == "amazon-books":
        frame = reference_filter(frame)
    last = frame.sort_values("timestamp:float").groupby("user_id:token")["rating:float"].last()
    users_with_a_test_case = frame.groupby("user_id:token").size().ge(3)  # leave-one-out: a history, a valid case, a test case
    return (frame["user_id:token"].nunique(), frame["item_id:token"].nunique(), len(frame),
            int((last[users_with_a_test_case] >= 4.5).sum()))


@pytest.mark.parametrize("name", DATASETS)
def test_each_dataset_setting_gives_the_counts_it_promises(name, tmp_path):
    frame = ratings_frame(name)
    config, spec = build_config("BC", name, [str(REPO / "properties" / f"{name}.yaml")],
                                {"data_path": str(write_atomic(tmp_path, name, frame)), "state": "ERROR", "topk": [10]})
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    ratings = AlignDataset(config)  # RecBole's plain dataset of the same files and filters: every rating, remapped
    counts = (ratings.user_num - 1, ratings.item_num - 1, len(ratings.inter_feat), int(rating_filter(config, test, "test").sum()))
    assert counts == expected_counts(name, frame)
    assert config["epochs"] == {"ml-1m": 30, "ml-20m": 12, "amazon-books": 10, "netflix": 10}[name]


def test_amazon_books_filters_as_the_reference_not_as_a_5_core(tmp_path):
    frame = ratings_frame("amazon-books")
    once, kcore = reference_filter(frame), frame
    while True:  # RecBole's 5-core: repeated until every user and item keeps 5 ratings
        users, items = kcore["user_id:token"], kcore["item_id:token"]
        kept = kcore[users.map(users.value_counts()).ge(5) & items.map(items.value_counts()).ge(5)]
        if len(kept) == len(kcore):
            break
        kcore = kept
    assert len(kcore) < len(once)  # the generated data tells the two apart
    data_path = str(write_atomic(tmp_path, "amazon-books", frame))
    for rule, expected in (("once", once), ("kcore", kcore)):
        config, _ = build_config("BC", "amazon-books", [str(REPO / "properties" / "amazon-books.yaml")],
                                    {"data_path": data_path, "state": "ERROR", "topk": [10], "inter_num_filter": rule})
        assert len(AlignDataset(config).inter_feat) == len(expected), rule
