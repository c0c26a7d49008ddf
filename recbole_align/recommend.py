"""Top-K recommendations of a trained model for chosen users, the items of their history excluded.

    recbole-align recommend --checkpoint=saved/HSTU-....pth --dataset=ml-100k --user_id=196,22 --topk=10 \\
        [--data_path=...] [--output=recommendations.csv]

A user's recommendations are the model's ranking at the user's test case, as RecBole's case study
(``recbole.utils.case_study.full_sort_topk``) and the evaluation rank them: the model reads the
user's history before the held-out item, and the items of that input window are never recommended
(nor the padding item). The run's configuration comes from the checkpoint (as RecBole's
``load_data_and_model``); ``--data_path`` points it at the data on this machine. When the dataset
has an ``.item`` file, its columns (e.g. the movie title) come with each item.
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from recbole.utils import init_seed

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import spec_of
from recbole_align.data import load_dataset, split_loaders
from recbole_align.diagnostics import checkpoint_model
from recbole_align.errors import AlignError
from recbole_align.memory import catalogue_rows, row_chunks
from recbole_align.pretrained import config_on_this_machine, read_pretrained
from recbole_align.report import write_csv


def item_features(config):
    """The dataset's ``.item`` file as a DataFrame keyed by the ``item_id`` token (columns without their
    ``:type``), or None without one."""
    path = Path(config["data_path"]) / f"{config['dataset']}.item"
    if not path.is_file():
        return None
    items = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    items.columns = [column.split(":")[0] for column in items.columns]
    return items.rename(columns={config["ITEM_ID_FIELD"]: "item_id"}).drop_duplicates("item_id")


def recommend(checkpoint_path, dataset, user_ids, topk=10, data_path=None):
    """DataFrame of the top ``topk`` items of each of ``user_ids`` (tokens, as in the .inter file):
    user_id, rank (1 = best), item_id, score and the ``.item`` file's columns."""
    checkpoint = read_pretrained(checkpoint_path, "checkpoint")
    if checkpoint["config"]["dataset"] != dataset:
        raise AlignError(f"checkpoint was trained on dataset [{checkpoint['config']['dataset']}], not [{dataset}].")
    config = config_on_this_machine(checkpoint["config"], data_path)  # one process, this machine's device
    model_class = spec_of(config).model_class
    init_seed(config["seed"], config["reproducibility"])
    with warnings.catch_warnings():  # RecBole 1.2.1's data loading warns about pandas 3 on every run
        warnings.simplefilter("ignore", FutureWarning)
        data = load_dataset(config, model_class)
    user_ids = [str(user) for user in user_ids]
    unknown = [user for user in user_ids if user not in data.field2token_id[data.uid_field]]
    if unknown:
        raise AlignError(f"unknown user_id {unknown}: not a user of dataset [{dataset}].")
    if not 0 < topk < data.item_num - 1:
        raise AlignError(f"topk must be between 1 and {data.item_num - 2} (the catalogue of [{dataset}]); got {topk}.")
    train_data, _, test_data = split_loaders(config, data)
    model = checkpoint_model(model_class, checkpoint, config, train_data._dataset)
    cases = test_data._dataset
    users = torch.as_tensor(data.token2id(data.uid_field, user_ids)).reshape(-1)
    matches, index = (cases.inter_feat[data.uid_field] == users[:, None]).nonzero(as_tuple=True)
    missing = sorted(set(range(len(users))) - set(matches.tolist()))
    if missing:
        raise AlignError(f"user_id {[user_ids[i] for i in missing]} has no test case (too short a history).")
    top_scores, top_items = zip(*(
        top_recommendations(model, cases[index[rows]].to(config["device"]), topk)
        for rows in row_chunks(len(index), catalogue_rows(data.item_num, config["catalogue_chunk_mb"]))
    ))
    top_scores, top_items = torch.cat(top_scores), torch.cat(top_items)
    frame = pd.DataFrame({
        "user_id": np.repeat(user_ids, topk),
        "rank": np.tile(np.arange(1, topk + 1), len(user_ids)),
        "item_id": data.id2token(data.iid_field, top_items.cpu().numpy()).reshape(-1),
        "score": top_scores.cpu().numpy().reshape(-1),
    })
    items = item_features(config)
    return frame if items is None else frame.merge(items, on="item_id", how="left")


@torch.no_grad()
def top_recommendations(model, interaction, topk):
    """(scores, items) [B, topk] of the best items for the cases of ``interaction``, the padding and the
    input window left out as the evaluation does."""
    scores = model.full_sort_predict(interaction).view(len(interaction), -1)
    scores[:, 0] = -np.inf  # the padding item
    scores.scatter_(1, interaction[model.ITEM_SEQ], -np.inf)  # the input window, as the evaluation
    return torch.topk(scores, topk)


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by a recbole-align run")
    parser.add_argument("--dataset", "-d", required=True, help="the dataset it was trained on")
    parser.add_argument("--user_id", required=True, help="comma-separated user ids, as in the .inter file")
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/ (default: the checkpoint's)")
    parser.add_argument("--output", default=None, help="also write the recommendations to this CSV file")
    args, overrides = parse_command_line(parser, argv)
    if overrides:
        raise AlignError(f"recommend takes its configuration from the checkpoint; unknown options {sorted(overrides)}.")
    users = [user.strip() for user in args.user_id.split(",") if user.strip()]
    frame = recommend(args.checkpoint, args.dataset, users, args.topk, args.data_path)
    for user, rows in frame.groupby("user_id", sort=False):
        print(f"user {user}:\n{rows.drop(columns='user_id').to_string(index=False)}\n")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_csv(args.output, frame)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
