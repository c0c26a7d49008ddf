"""Per-case evaluation (one scoring pass per split, the per-case results file) and paired statistics."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from recbole.evaluator import Collector
from test_data_and_evaluation import config_for, generated_frame

from conftest import REPO, run_in_process, tiny, write_atomic
from scipy import stats
from recbole_align.data import load_dataset, split_loaders
from recbole_align.evaluator import rating_filtered_loader
from recbole_align.evaluator.cases import CaseCollector
from recbole_align.evaluator.paired import case_metric, paired_difference, read_cases
from recbole_align.quick_start import main as run_main
from recbole_align.registry import MODELS

COLLECTOR_CONFIG = {"metrics": ["Hit", "NDCG", "FullMRR"], "topk": [3, 10], "eval_args": {"mode": "full"}, "device": "cpu"}


def test_counted_ranks_equal_recbole_sorted_ranks_with_ties():
    torch.manual_seed(0)
    scores = torch.randint(0, 6, (50, 30)).float()  # many ties
    scores[:, 0] = -np.inf
    scores[:5, 1:4] = -np.inf  # history items
    positive_u, positive_i = torch.arange(50), torch.randint(1, 30, (50,))
    ours, recbole = CaseCollector(COLLECTOR_CONFIG), Collector(COLLECTOR_CONFIG)
    for collector in (ours, recbole):
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    ours, recbole = ours.get_data_struct(), recbole.get_data_struct()
    assert torch.equal(ours.get("rec.meanrank"), recbole.get("rec.meanrank"))
    assert torch.equal(ours.get("rec.topk"), recbole.get("rec.topk"))


def test_ranks_and_top_hits_equal_recbole_with_several_targets_a_case():
    torch.manual_seed(1)
    scores = torch.randint(0, 4, (6, 20)).float()
    scores[:, 0] = -np.inf
    positive_u, positive_i = torch.tensor([2, 0, 0, 5, 3, 0]), torch.tensor([4, 7, 9, 1, 12, 7])  # case 0: two, one twice
    ours, recbole = CaseCollector(COLLECTOR_CONFIG), Collector(COLLECTOR_CONFIG)
    for collector in (ours, recbole):
        collector.eval_batch_collect(scores, None, positive_u, positive_i)
    ours, recbole = ours.get_data_struct(), recbole.get_data_struct()
    for key in ("rec.meanrank", "rec.topk"):
        assert torch.equal(ours.get(key), recbole.get(key)), key


def test_one_pass_gives_the_filtered_loader_metrics_and_the_ranks(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=30))
    config, spec = config_for("HSTU", "gen", data_path, embedding_size=8, attention_dim=8, linear_dim=8,
                              eval_rating_threshold=4.5, topk=[5, 10])
    _, _, test = split_loaders(config, load_dataset(config, spec.model_class))
    trainer = MODELS["HSTU"].trainer_class(config, spec.model_class(config, test._dataset))
    result = trainer.evaluate_split(test, "test")
    assert result.metrics == {k: float(v) for k, v in trainer.evaluate(test, load_best_model=False).items()}
    filtered = trainer.evaluate(rating_filtered_loader(config, test, "test"), load_best_model=False)
    assert result.filtered_metrics == {k: float(v) for k, v in filtered.items()}
    assert result.keep.sum() == 15 and (result.rating[result.keep] == 5).all()
    assert np.mean(1 / result.rank[result.keep]) == pytest.approx(result.filtered_metrics["mrr"], abs=1e-4)
    assert np.mean(case_metric(result.rank, "ndcg@10")) == pytest.approx(result.metrics["ndcg@10"], abs=1e-4)
    assert np.mean(case_metric(result.rank, "hit@5")) == pytest.approx(result.metrics["hit@5"], abs=1e-4)


def test_a_run_writes_its_per_case_results(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=30))
    args = tiny("--model=HSTU", "--dataset=gen", f"--data_path={data_path}", "--epochs=3", "--topk=[5,10]",
                "--MAX_ITEM_LIST_LENGTH=5", f"--results_file={tmp_path / 'r.json'}", f"--checkpoint_dir={tmp_path}")
    status, errors = run_in_process(tmp_path, run_main, *args)
    assert status == 0, errors
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["cases_file"] == str(tmp_path / "r.cases.npz")
    with np.load(results["cases_file"]) as cases:
        assert cases["best_epoch"] == results["best_epoch"] and cases["final_epoch"] == 2
        assert len(cases["test_rank"]) == results["n_test"] and cases["test_keep"].sum() == results["n_test_filtered"]
        if results["best_epoch"] == 2:
            assert np.array_equal(cases["test_rank"], cases["test_rank_final"])
    for split in ("valid", "test"):
        for filtered in (False, True):
            ranks = read_cases(results["cases_file"], split, filtered=filtered)
            metrics = results[f"{split}_filtered" if filtered else split]
            assert case_metric(ranks, "ndcg@10").mean() == pytest.approx(metrics["ndcg@10"], abs=1e-4)
    final = read_cases(results["cases_file"], "test", view="final")
    last_epoch = results["epoch_log"][-1]["test_filtered"]
    assert case_metric(final, "hit@10").mean() == pytest.approx(last_epoch["hit@10"], abs=1e-4)


def test_a_last_epoch_without_validation_is_tested_as_training_left_it(tmp_path):
    """epochs=3, eval_step=2: epoch 1 is validated (and is the best), epoch 2 is not; the final view is a
    test pass of the model after epoch 2, not epoch 1's pass again."""
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=30))
    args = tiny("--model=HSTU", "--dataset=gen", f"--data_path={data_path}", "--epochs=3", "--eval_step=2",
                "--topk=[5,10]", "--MAX_ITEM_LIST_LENGTH=5", "--learning_rate=0.01",
                f"--results_file={tmp_path / 'r.json'}", f"--checkpoint_dir={tmp_path}")
    status, errors = run_in_process(tmp_path, run_main, *args)
    assert status == 0, errors
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["best_epoch"] == 1 and ["test" in entry for entry in results["epoch_log"]] == [False, True, False]
    with np.load(results["cases_file"]) as cases:
        assert cases["final_epoch"] == 2
        assert not np.array_equal(cases["test_rank"], cases["test_rank_final"])


def test_valid_cases_all_selects_the_best_epoch_on_every_valid_case(tmp_path):
    data_path = write_atomic(tmp_path, "gen", generated_frame(n_users=30))
    args = tiny("--model=HSTU", "--dataset=gen", f"--data_path={data_path}", "--epochs=4", "--topk=[5,10]",
                "--MAX_ITEM_LIST_LENGTH=5", f"--results_file={tmp_path / 'r.json'}", f"--checkpoint_dir={tmp_path}",
                "--valid_cases=all", "--learning_rate=0.01")
    status, errors = run_in_process(tmp_path, run_main, *args)
    assert status == 0, errors
    results = json.loads((tmp_path / "r.json").read_text())
    log = results["epoch_log"]
    assert all(entry["valid"] != entry["valid_filtered"] for entry in log)  # 30 cases against 15: two views
    scores = [entry["valid"]["ndcg@10"] for entry in log]
    assert results["best_epoch"] == max(e for e, score in enumerate(scores) if score == max(scores))  # last of ties
    assert results["valid"]["ndcg@10"] == pytest.approx(max(scores), abs=1e-4)  # the checkpoint of that epoch


def ranks(values, users=None):
    return pd.Series(np.asarray(values, dtype=float), index=pd.Index(users or [f"u{i}" for i in range(len(values))]))


def test_paired_bootstrap_finds_a_known_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.integers(1, 40, 400).astype(float)
    better = np.maximum(base - 5, 1)  # every case moves up 5 places: a real gain
    gain = paired_difference([ranks(better)], [ranks(base)], "ndcg@10")
    assert gain["significant"] and gain["low"] > 0 and gain["difference"] > 0 and gain["cases"] == 400
    shuffled = rng.permutation(base)  # the same ranks dealt to other cases: no systematic difference
    null = paired_difference([ranks(shuffled)], [ranks(base)], "ndcg@10")
    assert null["low"] < 0 < null["high"] and not null["significant"]
    same = paired_difference([ranks(base)], [ranks(base)], "hit@10")
    assert same["difference"] == 0 and same["low"] == same["high"] == 0 and not same["significant"]


def test_paired_bootstrap_pools_seeds_case_by_case():
    a = [ranks([1, 2, 3, 20]), ranks([2, 1, 30, 4])]
    b = [ranks([2, 2, 3, 20]), ranks([2, 3, 30, 4])]
    pooled = paired_difference(a, b, "mrr")
    per_case = np.mean([1 / a[s].to_numpy() - 1 / b[s].to_numpy() for s in range(2)], axis=0)
    assert pooled["difference"] == pytest.approx(per_case.mean()) and pooled["seeds"] == 2
    with pytest.raises(Exception, match="same cases"):
        paired_difference([ranks([1, 2])], [ranks([1, 2], users=["x", "y"])])


def test_seeds_are_matched_by_user_not_by_position():
    a = [ranks([1, 2, 3, 20]), ranks([2, 1, 30, 4])]
    b = [ranks([2, 2, 3, 20]), ranks([2, 3, 30, 4])]
    reordered = [a[0], a[1].iloc[::-1]], [b[0], b[1].iloc[::-1]]  # a file written in another order
    assert paired_difference(*reordered, "mrr") == paired_difference(a, b, "mrr")
    with pytest.raises(Exception, match=r"run 2 of RSFT has other cases than run 1 of ExpRSFT"):
        paired_difference(a, [b[0], ranks([2, 3, 30, 4], users=["u0", "u1", "u2", "other"])], "mrr", names=("ExpRSFT", "RSFT"))


def test_the_interval_counts_the_seeds_and_is_a_t_interval():
    from recbole_align.evaluator.paired import seed_and_case_interval

    # no case-to-case variation: only the three seeds' differences, so a t interval with 2 degrees of freedom
    differences = np.repeat(np.array([[0.01], [0.02], [0.06]]), 50, axis=1)
    se, dof, low, high, p = seed_and_case_interval(differences)
    t = stats.t.ppf(0.975, 2)
    assert dof == pytest.approx(2) and se == pytest.approx(np.std([0.01, 0.02, 0.06], ddof=1) / np.sqrt(3))
    assert (low, high) == pytest.approx((0.03 - t * se, 0.03 + t * se)) and p == pytest.approx(2 * stats.t.sf(0.03 / se, 2))


def test_holm_adjusts_a_family_step_down():
    from recbole_align.evaluator.paired import holm

    assert holm([0.01, 0.04, 0.03, 0.2]).tolist() == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.5]).tolist() == [0.5]


def test_intervals_of_seeds_and_cases_cover_the_true_difference_and_the_case_only_ones_do_not():
    import importlib.util

    spec = importlib.util.spec_from_file_location("coverage", REPO / "benchmarks" / "coverage.py")
    coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coverage)
    for seeds in (3, 5):
        result = coverage.simulate(seeds, replications=300, seed_sd=0.01, resamples=300)
        assert 0.9 <= result["seeds and cases"] <= 0.99, (seeds, result)  # Satterthwaite's t: near 95% (3,000 runs: 94-95%)
        assert result["case-only bootstrap"] < 0.85, (seeds, result)


def test_the_trade_off_tables_count_all_cases_and_break_the_difference_down_by_rating(tmp_path):
    """Hand-made cases: X ranks the 5-star targets first where BC ranks them 3rd, and the 1-star ones 20th where
    BC ranks them 1st; the other ratings alike. The breakdown finds the gain at 5, the loss at 1, nothing
    elsewhere; the all-cases table pools them; the filtered one sees the 5-star cases only."""
    from recbole_align.experiment.aggregate import paired_tables, rating_breakdown
    from recbole_align.experiment.plan import Run

    rng = np.random.default_rng(0)
    users = np.array([f"u{i}" for i in range(300)])
    ratings = np.repeat([1.0, 3.0, 5.0], 100)
    runs = []
    for seed in (1, 2):
        bc_rank = np.where(ratings == 5, 3.0, np.where(ratings == 1, 1.0, rng.integers(1, 30, 300).astype(float)))
        x_rank = np.where(ratings == 5, 1.0, np.where(ratings == 1, 20.0, bc_rank))
        x_rank = x_rank + (ratings == 3) * rng.choice([0.0, 0.0, 1.0], 300)  # noise where neither is meant to move
        for label, rank in (("BC", bc_rank), ("ExpRSFT", x_rank)):
            path = tmp_path / f"{label}-{seed}.cases.npz"
            order = rng.permutation(300)  # every file in its own order: matched by user
            np.savez(path, test_user_id=users[order], test_rating=ratings[order], test_rank=rank[order],
                     test_rank_final=rank[order], test_keep=(ratings >= 4.5)[order])
            runs.append(Run(label, label, seed, {}, results={"cases_file": str(path)}))
    markdown, records = rating_breakdown(runs, ["BC", "ExpRSFT"], "final")
    by_rating = {r["rating"]: r for r in records}
    assert set(by_rating) == {1.0, 3.0, 5.0} and all(r["cases"] == 100 and r["seeds"] == 2 for r in records)
    assert by_rating[5.0]["difference"] == pytest.approx(1 - 1 / np.log2(4)) and by_rating[5.0]["significant_holm"]
    assert by_rating[1.0]["difference"] == pytest.approx(-1.0) and by_rating[1.0]["significant_holm"]
    assert not by_rating[3.0]["significant_holm"] and by_rating[3.0]["low"] < by_rating[3.0]["difference"] <= 0
    assert "| cases" in markdown and "**-100.00**" in markdown
    pooled = {(r["a"], r["metric"]): r for r in paired_tables(runs, ["BC", "ExpRSFT"], "final", filtered=False)[1]
              if r["seed"] == "pooled"}
    assert pooled["ExpRSFT", "ndcg@10"]["cases"] == 300
    assert pooled["ExpRSFT", "ndcg@10"]["difference"] == pytest.approx(
        np.mean([by_rating[r]["difference"] for r in (1.0, 3.0, 5.0)]))
    filtered = [r for r in paired_tables(runs, ["BC", "ExpRSFT"], "final")[1] if r["seed"] == "pooled"]
    assert filtered[0]["cases"] == 100 and filtered[0]["difference"] == pytest.approx(by_rating[5.0]["difference"])


def test_the_trade_off_points_are_each_rows_means_on_all_and_on_the_filtered_cases(tmp_path):
    from recbole_align.experiment.aggregate import trade_off
    from recbole_align.experiment.plan import Run

    users, ratings = np.array(["a", "b", "c", "d"]), np.array([5.0, 5.0, 1.0, 2.0])
    runs = []
    for label, best, final in (("BC", [1, 3, 1, 1], [9, 9, 9, 9]), ("ExpRSFT λ=2", [9, 9, 9, 9], [1, 1, 3, 20])):
        path = tmp_path / f"{label}.cases.npz"
        np.savez(path, test_user_id=users, test_rating=ratings, test_rank=np.array(best, float),
                 test_rank_final=np.array(final, float), test_keep=ratings >= 4.5)
        runs.append(Run(label, "ExpRSFT", 1, {}, results={"cases_file": str(path)}))
    points = trade_off(runs, ["BC", "ExpRSFT λ=2"])
    ndcg = lambda ranks: np.mean([1 / np.log2(r + 1) if r <= 10 else 0 for r in ranks])  # noqa: E731
    assert points["BC"] == ((pytest.approx(ndcg([1, 3, 1, 1])), 0.0), (pytest.approx(ndcg([1, 3])), 0.0))  # its best
    assert points["ExpRSFT λ=2"] == ((pytest.approx(ndcg([1, 1, 3, 20])), 0.0), (pytest.approx(1.0), 0.0))  # final
