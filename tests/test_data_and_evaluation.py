"""The dataset (exact time order, one training sequence per user, noisy training ratings) and the
rating-filtered evaluator."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from recbole.config import Config
from recbole.data.dataset import SequentialDataset
from recbole.evaluator.collector import DataStruct

from conftest import REPO, write_atomic
from recbole_align.compat import deterministic_cuda, numpy2_aliases
from recbole_align.data import AlignDataset, AlignSequentialDataset
from recbole_align.data.dataset import INTERACTION_INDEX, rating_noise
from recbole_align.errors import AlignError
from recbole_align.evaluator import FullMRR, rating_filtered_loader
from recbole_align.config import build_config
from recbole_align.data import load_dataset, split_loaders
from recbole_align.registry import MODELS


def generated_frame(n_users=12, seed=0):
    """Users with 6..14 interactions, one per day; the last rating of user u is 5 if u is even, else 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, n_users + 1):
        length = int(rng.integers(6, 15))
        items = rng.choice(np.arange(1, 41), size=length, replace=False)
        for step, item in enumerate(items):
            rating = (5 if user % 2 == 0 else 3) if step == length - 1 else int(rng.integers(1, 6))
            rows.append((user, int(item), rating, 1_000_000_000 + 86_400 * step + user))
    return pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])


def config_for(model, dataset, data_path, **overrides):
    config, spec = build_config(
        model, dataset, config_dict={"data_path": str(data_path), "MAX_ITEM_LIST_LENGTH": 5, "topk": [10], "state": "ERROR", **overrides}
    )
    return config, spec


def by_user(part):
    """A split's columns ordered by (user, history length), floats as float64."""
    inter = part.inter_feat
    order = torch.argsort(inter["user_id"] * 10**6 + inter["item_length"], stable=True)
    return {k: v[order].double() if v.is_floating_point() else v[order] for k, v in inter.interaction.items()}


def test_samples_equal_recbole_augmentation_on_a_time_sorted_file(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, _ = config_for("SASRec", "gen", data_path)
    stock = SequentialDataset(config).build()
    ours = AlignSequentialDataset(config, all_position_training=False).build()
    for stock_part, our_part in zip(stock, ours):
        expected, actual = by_user(stock_part), by_user(our_part)
        assert expected.keys() == actual.keys()
        for key in expected:
            if key.startswith("timestamp"):  # RecBole keeps float32 (64 s steps); ours are exact
                assert actual[key].dtype == torch.float64
                actual[key] = actual[key].float().double()
            assert torch.equal(expected[key], actual[key]), key


def test_all_position_mode_keeps_valid_and_test_and_the_longest_train_prefix(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, _ = config_for("HSTU", "gen", data_path)
    prefixes = AlignSequentialDataset(config, all_position_training=False).build()
    per_user = AlignSequentialDataset(config, all_position_training=True).build()
    for prefix_part, user_part in zip(prefixes[1:], per_user[1:]):
        expected, actual = by_user(prefix_part), by_user(user_part)
        assert all(torch.equal(expected[k], actual[k]) for k in expected)
    train_prefixes, train_users = by_user(prefixes[0]), by_user(per_user[0])
    users = train_prefixes["user_id"]
    is_longest = torch.ones_like(users, dtype=torch.bool)
    is_longest[:-1] = users[1:] != users[:-1]
    assert len(train_users["user_id"]) == 12 == int(is_longest.sum())
    assert all(torch.equal(train_prefixes[k][is_longest], train_users[k]) for k in train_users)


def test_rating_noise_is_seeded_gaussian():
    noise = rating_noise(200_000, 0.5, 2020)
    assert torch.equal(noise, rating_noise(200_000, 0.5, 2020))  # a function of (seed, interaction)
    assert not torch.equal(noise, rating_noise(200_000, 0.5, 2021))
    assert noise.std().item() == pytest.approx(0.5, rel=0.01) and abs(noise.mean().item()) < 0.005
    assert rating_noise(10, 0.0, 2020).eq(0).all()


def splits(tmp_path, all_position_training=True, **overrides):
    """The train, valid and test parts of the generated data, by user (see :func:`by_user`)."""
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, _ = config_for("HSTU", "gen", data_path, **overrides)
    return [by_user(part) for part in AlignSequentialDataset(config, all_position_training).build()]


def test_reward_noise_changes_the_training_ratings_only(tmp_path):
    clean, noisy = splits(tmp_path), splits(tmp_path, reward_noise_std=0.5)
    assert clean[0].keys() == noisy[0].keys() and INTERACTION_INDEX not in clean[0]  # no column left behind
    for clean_part, noisy_part in zip(clean[1:], noisy[1:]):  # valid and test: the evaluator's ratings, clean
        assert all(torch.equal(clean_part[k], noisy_part[k]) for k in clean_part)
    train, noisy_train = clean[0], noisy[0]
    assert all(torch.equal(train[k], noisy_train[k]) for k in train if not k.startswith("rating"))
    padding = torch.arange(5) >= train["item_length"].unsqueeze(1)
    history_noise = (noisy_train["rating_list"] - train["rating_list"])[~padding]
    assert (noisy_train["rating_list"][padding] == 0).all() and (history_noise != 0).all()
    assert (noisy_train["rating"] != train["rating"]).all() and 0.2 < history_noise.std() < 0.8
    assert all(torch.equal(noisy[0][k], splits(tmp_path, reward_noise_std=0.5)[0][k]) for k in train)  # same seed
    assert not torch.equal(noisy_train["rating"], splits(tmp_path, reward_noise_std=0.5, seed=1)[0]["rating"])
    assert all(torch.equal(train[k], splits(tmp_path, reward_noise_std=0)[0][k]) for k in train)  # σ = 0: clean


def test_an_interaction_has_one_noisy_rating_wherever_it_appears(tmp_path):
    per_user = splits(tmp_path, reward_noise_std=0.5)[0]
    prefixes = splits(tmp_path, all_position_training=False, reward_noise_std=0.5)[0]
    users = prefixes["user_id"]
    same_user = users[1:] == users[:-1]
    # sample k's target is the last history item of the user's sample k + 1 (histories of 5 at most)
    last_history = prefixes["rating_list"][1:].gather(1, prefixes["item_length"][1:, None] - 1).squeeze(1)
    assert torch.equal(last_history[same_user], prefixes["rating"][:-1][same_user])
    longest = torch.cat([~same_user, torch.tensor([True])])  # one training sequence per user: the longest prefix
    assert all(torch.equal(prefixes[k][longest], per_user[k]) for k in per_user)


def test_time_order_is_exact_within_float32_resolution(tmp_path):
    # Two ratings 10 s apart round to the same float32 timestamp; the file lists the later one first.
    rows = [(1, item, 4.0, 1_300_000_000 + t) for item, t in [(1, 0), (2, 100), (4, 310), (3, 300), (5, 400)]]
    rows += [(2, item, 4.0, 1_300_000_000 + 10 * item) for item in range(1, 6)]
    frame = pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    assert np.float32(1_300_000_310) == np.float32(1_300_000_300)
    data_path = write_atomic(tmp_path, "ties", frame)
    config, _ = config_for("HSTU", "ties", data_path)
    _, _, test = AlignSequentialDataset(config, all_position_training=True).build()
    user1 = test.inter_feat[test.inter_feat["user_id"] == test.field2token_id["user_id"]["1"]]
    tokens = test.field2id_token["item_id"]
    history = [tokens[i] for i in user1["item_id_list"][0][: user1["item_length"][0]].tolist()]
    assert history == ["1", "2", "3", "4"] and tokens[user1["item_id"][0]] == "5"
    assert user1["timestamp_list"].dtype == torch.float64


def test_rating_filter_keeps_exactly_the_cases_at_or_above_threshold(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, spec = config_for("HSTU", "gen", data_path, eval_rating_threshold=4.5)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    filtered = rating_filtered_loader(config, test, "test")
    users = sorted(int(test._dataset.field2id_token["user_id"][u]) for u in filtered._dataset.inter_feat["user_id"])
    assert users == [2, 4, 6, 8, 10, 12]
    assert (filtered._dataset.inter_feat["rating"] == 5).all()
    config["eval_rating_threshold"] = None
    assert rating_filtered_loader(config, test, "test") is test


def test_rating_filter_errors(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, spec = config_for("HSTU", "gen", data_path, eval_rating_threshold=6)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    with pytest.raises(AlignError, match="filtered test set is empty"):
        rating_filtered_loader(config, test, "test")
    no_rating = generated_frame().drop(columns=["rating:float"])
    data_path = write_atomic(tmp_path, "norating", no_rating)
    config, spec = config_for("HSTU", "norating", data_path)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    with pytest.raises(AlignError, match="needs a rating field"):
        rating_filtered_loader(config, test, "test")
    config, spec = config_for("HSTU", "norating", data_path, reward_noise_std=0.5, eval_rating_threshold=None)
    with pytest.raises(AlignError, match=r"reward_noise_std=0.5 noises the training ratings: it needs the rating field \[rating\]"):
        load_dataset(config, spec.model_class)


def test_full_mrr_is_the_mean_reciprocal_full_rank():
    config = {"metric_decimal_place": 6}
    struct = DataStruct()
    # columns: sum of the positives' average ranks, candidate count, number of positives
    struct.set("rec.meanrank", torch.tensor([[1.0, 100, 1], [4.0, 100, 1], [250.0, 100, 1], [2.5, 100, 1]]))
    expected = (1 + 1 / 4 + 1 / 250 + 1 / 2.5) / 4
    assert FullMRR(config).calculate_metric(struct)["mrr"] == pytest.approx(expected, abs=1e-6)


def test_evaluation_excludes_history_items(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    model = spec.model_class(config, test._dataset).to(config["device"])
    trainer = MODELS["HSTU"].trainer_class(config, model)
    trainer.tot_item_num = test._dataset.item_num
    batch = next(iter(test))
    interaction, scores, _, positive_i = trainer._full_sort_batch_eval(batch)
    history = interaction["item_id_list"]
    assert torch.isinf(scores.gather(1, history)).all()
    assert torch.isfinite(scores.gather(1, positive_i.to(scores.device).unsqueeze(1))).all()
    n_history = (history > 0).sum(1)
    assert (torch.isinf(scores).sum(1) == n_history + 1).all()  # + the padding column


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_a_clear_error(tmp_path, bad):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8)
    train, _, _ = split_loaders(config, load_dataset(config, spec.model_class))
    trainer = MODELS["HSTU"].trainer_class(config, spec.model_class(config, train._dataset).to(config["device"]))
    trainer.current_epoch = 3
    trainer._check_nan(torch.tensor(1.5))  # finite: no error
    with pytest.raises(AlignError, match=r"\[HSTU\] training loss became .* in epoch 3; stopped"):
        trainer._check_nan(torch.tensor(bad))


def test_the_device_follows_the_visible_gpus_and_use_gpu(monkeypatch):
    """RecBole's Config sets CUDA_VISIBLE_DEVICES to gpu_id (default '0') and ignores use_gpu: a scheduler's
    CUDA_VISIBLE_DEVICES is kept when no gpu_id is given, a given gpu_id wins, use_gpu False is the CPU."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    settings = {"state": "ERROR"}
    assert build_config("HSTU", "ml-100k", config_dict=settings)[0]["gpu_id"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert build_config("HSTU", "ml-100k", config_dict={**settings, "gpu_id": "1"})[0]["gpu_id"] == "1"
    config, _ = build_config("HSTU", "ml-100k", config_dict={**settings, "use_gpu": False})
    assert config["gpu_id"] == "" and config["device"].type == "cpu"


@pytest.mark.parametrize("device, reproducibility, expected", [("cuda", True, True), ("cuda", False, False),
                                                               ("cpu", True, False)])
def test_reproducible_cuda_runs_use_deterministic_kernels(monkeypatch, device, reproducibility, expected):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        deterministic_cuda({"reproducibility": reproducibility, "device": torch.device(device)})
        assert torch.are_deterministic_algorithms_enabled() is expected
        assert ("CUBLAS_WORKSPACE_CONFIG" in os.environ) is expected
    finally:
        torch.use_deterministic_algorithms(False)


def test_numpy2_aliases_let_recbole_set_its_own(monkeypatch):
    """RecBole's Config.compatibility_settings reads np.float_, np.complex_ and np.unicode_ (gone in numpy 2)."""
    for alias in ("float_", "complex_", "unicode_"):
        monkeypatch.delitem(vars(np), alias, raising=False)
    numpy2_aliases()
    Config.compatibility_settings(None)
    assert (np.float_, np.complex_, np.unicode_, np.float) == (np.float64, np.complex128, np.str_, np.float64)


def test_evaluation_in_blocks_within_the_memory_budget_gives_the_same_metrics(tmp_path):
    """A catalogue_chunk_mb too small for two cases' scores makes the evaluation loaders' batches 1 case
    (the run's config keeps its eval_batch_size): the metrics and each case's rank are those of one batch
    of every case."""
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=30))
    batch_sizes, metrics, ranks = [], [], []
    for budget in (512, 0.001):  # 0.001 MiB: one row of 41 items x 16 bytes fits, two do not
        config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8,
                                  catalogue_chunk_mb=budget)
        _, valid, test = split_loaders(config, load_dataset(config, spec.model_class))
        torch.manual_seed(0)
        trainer = MODELS["HSTU"].trainer_class(config, spec.model_class(config, test._dataset).to(config["device"]))
        metrics.append(trainer.evaluate(test, load_best_model=False))
        ranks.append(trainer.eval_collector.last_struct.get("rec.meanrank")[:, 0])
        filtered_valid = rating_filtered_loader(config, valid, "valid")  # model selection's loader: bounded too
        batch_sizes.append((test.step, filtered_valid.step, config["eval_batch_size"]))
    assert batch_sizes == [(4096, 4096, 4096), (1, 1, 4096)]
    assert metrics[1] == pytest.approx(metrics[0]) and torch.equal(ranks[0], ranks[1])


def test_evaluation_gives_plain_floats(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame())
    config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8)
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    trainer = MODELS["HSTU"].trainer_class(config, spec.model_class(config, test._dataset).to(config["device"]))
    result = trainer.evaluate(test, load_best_model=False)
    assert set(result) == {"hit@10", "ndcg@10", "mrr"} and all(type(v) is float for v in result.values())


@pytest.mark.parametrize("path", sorted((REPO / "properties").rglob("*.yaml")), ids=lambda p: p.name)
def test_the_property_files_users_copy_build_their_configs(path):
    """Every file of the top-level properties/ builds the config of the model it is for, with its values."""
    model = path.stem.split("-")[0] if path.parent.name == "methods" else "ExpRSFT"
    settings = yaml.safe_load(path.read_text())
    config, _ = build_config(model, "ml-1m-half", [str(path)], {"state": "ERROR"})
    if "data_path" in settings:  # RecBole appends the dataset's folder
        assert config["data_path"] == os.path.join(settings.pop("data_path"), "ml-1m-half")
    assert {key: config[key] for key in settings} == settings


def plain_and_shaped(tmp_path, shape):
    """The generated .inter file as written by pandas, and the same table saved in ``shape``."""
    frame = generated_frame()
    plain = write_atomic(tmp_path / "plain", "gen", frame)
    text = (plain / "gen" / "gen.inter").read_text()
    shaped = tmp_path / "shaped" / "gen"
    shaped.mkdir(parents=True)
    header, _, body = text.partition("\n")
    if shape == "spreadsheet":  # BOM, Windows line ends, quoted header, a trailing tab on every line
        quoted = "\t".join(f'"{field}"' for field in header.split("\t"))
        data = "\ufeff" + "\r\n".join(line + "\t" for line in [quoted, *body.splitlines()]) + "\r\n"
        (shaped / "gen.inter").write_bytes(data.encode("utf-8"))
    elif shape == "untyped header":
        (shaped / "gen.inter").write_text("\t".join(f.split(":")[0] for f in header.split("\t")) + "\n" + body)
    elif shape == "latin-1":
        (shaped / "gen.inter").write_bytes((header + "\n" + body.replace("\t3\t", "\t3\t", 1)).encode() + b"caf\xe9\t1\t3\t1\n")
    return plain, shaped.parent


def test_atomic_files_as_spreadsheets_save_them_load_as_the_plain_file(tmp_path):
    """Both the run's sequential dataset and the unsplit one that diagnostics' Table 2 reads."""
    plain, shaped = plain_and_shaped(tmp_path, "spreadsheet")
    loaded, unsplit = [], []
    for data_path in (plain, shaped):
        config, spec = config_for("HSTU", "gen", data_path)
        loaded.append(load_dataset(config, spec.model_class).inter_feat)
        unsplit.append(AlignDataset(config).inter_feat)
    for first, second in (loaded, unsplit):
        assert list(first.columns) == list(second.columns)
        for column in first.columns:
            assert torch.equal(torch.as_tensor(first[column].to_numpy()), torch.as_tensor(second[column].to_numpy()))
    assert len(unsplit[0]) == len(generated_frame())


@pytest.mark.parametrize("shape, message", [
    ("untyped header", "header field [user_id] is not name:type; RecBole's atomic files type every column"),
    ("latin-1", "is not utf-8 text (byte 0xe9 at offset"),
])
def test_atomic_files_that_cannot_be_read_fail_in_one_line_naming_the_file(tmp_path, shape, message):
    _, shaped = plain_and_shaped(tmp_path, shape)
    config, spec = config_for("HSTU", "gen", shaped)
    with pytest.raises(AlignError) as error:
        load_dataset(config, spec.model_class)
    assert f"Atomic file [{shaped / 'gen' / 'gen.inter'}]" in str(error.value) and message in str(error.value)


def atomic_tables(data_path, separator, reader_patched):
    """The .inter and .item frames of ``gen`` as AlignDataset reads them, with pandas' C parser (the
    compat fix) or with RecBole's own python parser."""
    import contextlib
    from unittest import mock

    import recbole_align.data.dataset as dataset_module

    config, _ = config_for("HSTU", "gen", data_path, field_separator=separator, seq_separator=" ",
                           load_col={"inter": ["user_id", "item_id", "rating", "timestamp"], "item": ["item_id", "title", "tags", "scores"]})
    parser = contextlib.nullcontext() if reader_patched else mock.patch.object(dataset_module, "c_csv_parser", contextlib.nullcontext)
    with parser:
        dataset = AlignDataset(config)
    return dataset.inter_feat, dataset.item_feat, dataset.field2id_token


@pytest.mark.parametrize("separator", ["\t", ",", "::"])
def test_the_c_parser_reads_atomic_files_as_recboles_python_parser(tmp_path, separator):
    """Leading zeros, spaces and non-ASCII in tokens, sequences, scientific and missing floats: the same frames
    (a separator of two characters keeps the python parser, the only one that takes it)."""
    frame = generated_frame()
    frame["item_id:token"] = frame["item_id:token"].map(lambda item: f"{item:04d}")
    frame.loc[3, "rating:float"] = np.nan
    frame.loc[4, "timestamp:float"] = 1.0e9
    items = sorted(frame["item_id:token"].unique())
    item_frame = pd.DataFrame({"item_id:token": items,
                               "title:token": [f"Café {i} part" if i % 3 else f"n{i}" for i in range(len(items))],
                               "tags:token_seq": [" ".join(f"t{j}" for j in range(i % 4)) for i in range(len(items))],
                               "scores:float_seq": [" ".join(f"{j * 0.5:g}" for j in range(i % 3 + 1)) for i in range(len(items))]})
    folder = tmp_path / "gen"
    folder.mkdir()
    for table, suffix in ((frame, "inter"), (item_frame, "item")):
        lines = [separator.join(table.columns)] + [separator.join("" if pd.isna(v) else str(v) for v in row)
                                                   for row in table.itertuples(index=False)]
        (folder / f"gen.{suffix}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (c_inter, c_item, c_tokens), (python_inter, python_item, python_tokens) = (
        atomic_tables(tmp_path, separator, patched) for patched in (True, False))
    assert c_tokens.keys() == python_tokens.keys() and all(np.array_equal(c_tokens[f], python_tokens[f]) for f in c_tokens)
    assert "0004" in c_tokens["item_id"] and "Café 1 part" in c_tokens["title"]
    for ours, recboles in ((c_inter, python_inter), (c_item, python_item)):
        assert list(ours.columns) == list(recboles.columns) and len(ours) == len(recboles) > 0
        for column in ours.columns:
            assert ours[column].dtype == recboles[column].dtype, column
            assert all(np.array_equal(a, b, equal_nan=a.dtype.kind == "f") for a, b in zip(ours[column], recboles[column])) \
                if ours[column].dtype == object else ours[column].equals(recboles[column]), column
