"""recbole-align recommend: the top-K items of chosen users, history excluded, with the .item titles."""

import unittest.mock

import pandas as pd
import pytest

from conftest import ML100K_INTER, run_cli, run_in_process, run_tool, tiny, write_atomic
from recbole_align import export as export_command
from recbole_align import quick_start
from recbole_align import recommend as recommend_command
from recbole_align.recommend import recommend


def recommend_cli(cwd, *args):
    """``python -m recbole_align recommend ...`` in ``cwd`` (the console script's code path)."""
    return run_tool(cwd, "recbole_align", "recommend", *args)


@pytest.mark.slow
def test_recommend_ranks_like_the_evaluation_and_excludes_the_history(tmp_path):
    frame = pd.read_csv(ML100K_INTER, sep="\t")
    frame = frame[frame["user_id:token"].isin(sorted(frame["user_id:token"].unique())[:40])]
    data_path = write_atomic(tmp_path / "data", "ml-100k-titles", frame)
    titles = pd.DataFrame({"item_id:token": sorted(frame["item_id:token"].unique())})
    titles["movie_title:token_seq"] = "movie " + titles["item_id:token"].astype(str)
    titles.to_csv(data_path / "ml-100k-titles" / "ml-100k-titles.item", sep="\t", index=False)
    # catalogue_chunk_mb: blocks of a few cases (evaluation and recommend), whose ranking must be the whole one's
    process, results = run_cli(tmp_path, "--model=HSTU", "--dataset=ml-100k-titles", f"--data_path={data_path}",
                               *tiny("--epochs=1"), "--catalogue_chunk_mb=0.05")
    assert process.returncode == 0, process.stderr[-3000:]

    process = recommend_cli(tmp_path, f"--checkpoint={results['checkpoint']}", "--dataset=ml-100k-titles",
                            "--user_id=1,7", "--topk=5", "--output=recs.csv")
    assert process.returncode == 0, process.stderr[-3000:]
    assert "user 1:" in process.stdout and "user 7:" in process.stdout
    written = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str})
    assert list(written.columns) == ["user_id", "rank", "item_id", "score", "movie_title"]
    assert written.groupby("user_id")["rank"].apply(list).to_dict() == {"1": [1, 2, 3, 4, 5], "7": [1, 2, 3, 4, 5]}
    assert (written["movie_title"] == "movie " + written["item_id"]).all()

    users = [str(u) for u in sorted(frame["user_id:token"].unique())]
    top10 = recommend(results["checkpoint"], "ml-100k-titles", users, topk=10)
    ordered = frame.sort_values(["user_id:token", "timestamp:float"], kind="stable").astype({"item_id:token": str})
    hits = 0
    for user, items in ordered.groupby("user_id:token")["item_id:token"]:
        items = list(items)
        recommended = set(top10.loc[top10["user_id"] == str(user), "item_id"])
        assert not recommended & set(items[:-1][-20:])  # the test case's input window (MAX_ITEM_LIST_LENGTH 20)
        hits += items[-1] in recommended
    assert hits / len(users) == results["test"]["hit@10"]  # the same ranking as the evaluation's


@pytest.mark.slow
def test_recommend_errors(tmp_path, ml100k_slice):
    process, results = run_cli(tmp_path, "--model=HSTU", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
                               *tiny("--epochs=1"))
    assert process.returncode == 0, process.stderr[-3000:]
    for args, message in (
        (["--user_id=1,no-such-user"], "unknown user_id ['no-such-user']"),
        (["--user_id=1", "--topk=0"], "topk must be between 1 and"),
        (["--user_id=1", "--dataset=ml-100k"], "trained on dataset [ml-100k-slice], not [ml-100k]"),
        (["--user_id=1", "--epochs=3"], "takes its configuration from the checkpoint"),
    ):
        base = [f"--checkpoint={results['checkpoint']}", "--dataset=ml-100k-slice"]
        keys = {arg.split("=")[0] for arg in args}
        status, lines = run_in_process(tmp_path, recommend_command.main, *[a for a in base if a.split("=")[0] not in keys], *args)
        assert status == 2 and len(lines) == 1 and message in lines[0], (args, lines)


@pytest.mark.slow
def test_an_exported_model_recommends_and_post_trains_as_its_checkpoint(tmp_path, ml100k_slice):
    """export writes safetensors and plain JSON only; recommend and --pretrained_checkpoint read the folder
    without unpickling and give what the .pth gives."""
    process, results = run_cli(tmp_path, "--model=BC", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
                               *tiny("--epochs=1"))
    assert process.returncode == 0, process.stderr[-3000:]
    status, lines = run_in_process(tmp_path, export_command.main, f"--checkpoint={results['checkpoint']}",
                                   f"--output={tmp_path / 'shared'}")
    assert status == 0, lines
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["config.json", "model.safetensors"]
    users = ["1", "7", "22"]
    from_pth = recommend(results["checkpoint"], "ml-100k-slice", users, topk=10, data_path=ml100k_slice)
    with unittest.mock.patch("torch.load", side_effect=AssertionError("unpickled")):
        from_folder = recommend(tmp_path / "shared", "ml-100k-slice", users, topk=10, data_path=ml100k_slice)
    pd.testing.assert_frame_equal(from_pth, from_folder)
    status, lines = run_in_process(tmp_path, quick_start.main, "--model=ExpRSFT", "--dataset=ml-100k-slice",
                                   f"--data_path={ml100k_slice}", f"--pretrained_checkpoint={tmp_path / 'shared'}",
                                   *tiny("--epochs=0"))
    assert status == 0, lines

