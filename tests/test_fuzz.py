"""Fuzz test of the command line: small generated atomic files (saved as text tools save them) and settings,
some of any type, one epoch of a tiny HSTU.

Every run must either succeed with a complete results JSON or stop with exit status 2 and one line
``recbole-align: error: ...`` (no traceback, nothing written as if it had succeeded). The runs are
in-process (``recbole_align.quick_start.main``) to keep the examples cheap; set
``RECBOLE_ALIGN_FUZZ_EXAMPLES`` (default 8) to run more by hand.
"""

import json
import math
import os

import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import run_in_process, write_atomic
from recbole_align.quick_start import main

EXAMPLES = int(os.environ.get("RECBOLE_ALIGN_FUZZ_EXAMPLES", "8"))
ODD_RATINGS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "negative": -3.0, "huge": 1e30, "text": "good"}


@st.composite
def atomic_files(draw):
    """An .inter table: 1-6 users with 1-25 interactions each over a catalogue of 2-80 items, ratings
    1-5 and timestamps with many ties; sometimes an odd rating or a text timestamp in one row, or no
    rating or timestamp column (and, through SETTINGS' shape, saved as text tools save files)."""
    n_items = draw(st.integers(min_value=2, max_value=80))
    rows = []
    for user in range(draw(st.integers(min_value=1, max_value=6))):
        for _ in range(draw(st.integers(min_value=1, max_value=25))):
            item = draw(st.integers(min_value=1, max_value=n_items))
            rating = draw(st.integers(min_value=1, max_value=5))
            rows.append([f"u{user}", f"i{item}", float(rating), draw(st.integers(min_value=0, max_value=6))])
    frame = pd.DataFrame(rows, columns=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    row = draw(st.integers(min_value=0, max_value=len(frame) - 1))
    odd = draw(st.sampled_from(["none", "none", "none", *ODD_RATINGS, "text timestamp"]))
    if odd in ODD_RATINGS:
        frame = frame.astype({"rating:float": object})
        frame.loc[row, "rating:float"] = ODD_RATINGS[odd]
    elif odd == "text timestamp":
        frame = frame.astype({"timestamp:float": object})
        frame.loc[row, "timestamp:float"] = "soon"
    missing = draw(st.sampled_from([[], [], [], ["rating:float"], ["timestamp:float"]]))
    return frame.drop(columns=missing)


def saved_as(path, shape):
    """Rewrite the atomic file ``path`` as a text tool might save it."""
    text = path.read_text()
    header, _, body = text.partition("\n")
    lines = body.splitlines()
    if shape == "bom, CRLF":
        path.write_bytes(("\ufeff" + "\r\n".join([header, *lines]) + "\r\n").encode("utf-8"))
    elif shape == "trailing tabs":
        path.write_text("\n".join(line + "\t" for line in [header, *lines]) + "\n")
    elif shape == "quoted header":
        path.write_text("\t".join(f'"{field}"' for field in header.split("\t")) + "\n" + body)
    elif shape == "untyped header":
        path.write_text("\t".join(field.split(":")[0] for field in header.split("\t")) + "\n" + body)
    elif shape == "latin-1 byte":
        path.write_bytes(text.encode("utf-8") + b"u\xe9\ti1\t3\t1\n")


SHAPES = ("plain", "plain", "bom, CRLF", "trailing tabs", "quoted header", "untyped header", "latin-1 byte")
# A sample of the keys users set (RecBole's and ours), each given a value of any type: valid or not, the run
# must end one of the two ways. (Not drawn: keys whose values change the machine, e.g. gpu_id, nproc, worker.)
SAMPLED_KEYS = ("seed", "reproducibility", "learner", "weight_decay", "dropout_prob", "eval_args", "load_col",
                "metrics", "learning_rate", "train_batch_size", "eval_batch_size", "stopping_step", "valid_cases",
                "reward_scope", "use_gpu", "n_layers", "n_heads", "clip_grad_norm", "train_neg_sample_args",
                "catalogue_chunk_mb", "reward_lambda", "trajectory_length", "mixed_precision")
ANY_VALUE = st.one_of(st.sampled_from(["abc", "~", "True", "False", "2.5", "-0.5", "[1,2]", "{a: 1}", "''"]),
                      st.integers(min_value=-2, max_value=3).map(str))
SETTINGS = st.fixed_dictionaries({
    "setting": st.one_of(st.none(), st.none(), st.tuples(st.sampled_from(SAMPLED_KEYS), ANY_VALUE)),
    "shape": st.sampled_from(SHAPES),
    "topk": st.sampled_from([("[10,50]", "NDCG@10"), ("[5]", "NDCG@5"), ("[1,3]", "MRR"), ("[1,3]", "NDCG@3")]),
    "eval_rating_threshold": st.sampled_from(["4.5", "~", "0"]),
    "MAX_ITEM_LIST_LENGTH": st.sampled_from(["4", "20"]),
    "model": st.sampled_from(["HSTU", "ExpRSFT"]),
})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=atomic_files(), options=SETTINGS)
def test_every_run_succeeds_completely_or_fails_in_one_line(tmp_path_factory, frame, options):
    folder = tmp_path_factory.mktemp("fuzz")  # RecBole writes ./log and ./saved there
    data_path = write_atomic(folder / "data", "fuzz", frame)
    saved_as(data_path / "fuzz" / "fuzz.inter", options["shape"])
    results_file = folder / "results.json"
    args = [
        f"--model={options['model']}", "--dataset=fuzz", f"--data_path={data_path}", "--epochs=1",
        f"--topk={options['topk'][0]}", f"--valid_metric={options['topk'][1]}", f"--eval_rating_threshold={options['eval_rating_threshold']}",
        f"--MAX_ITEM_LIST_LENGTH={options['MAX_ITEM_LIST_LENGTH']}", "--embedding_size=8", "--attention_dim=8",
        "--linear_dim=8", "--num_negatives=4", "--train_batch_size=8", "--show_progress=False", "--state=ERROR",
        f"--results_file={results_file}",
    ]
    if options["setting"]:
        args.append("--{}={}".format(*options["setting"]))
    status, lines = run_in_process(folder, main, *args)
    event(f"exit status {status}" + (f": {lines[0][22:70]}" if status and lines else "") + f" ({options['shape']})")
    if status == 0:
        results = json.loads(results_file.read_text())
        topk = json.loads(options["topk"][0])
        metrics = {f"{name}@{k}" for k in topk for name in ("hit", "ndcg")} | {"mrr"}
        for split in ("valid", "valid_filtered", "test", "test_filtered"):
            assert set(results[split]) == metrics
            assert all(0 <= value <= 1 for value in results[split].values())
            assert results[f"n_{split}"] > 0
        assert results["epochs_run"] == 1
    else:
        assert status == 2, lines
        assert len(lines) == 1 and lines[0].startswith("recbole-align: error: "), lines
        assert not results_file.exists()

