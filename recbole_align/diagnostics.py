"""The Exp-RSFT paper's two reward-model diagnostics (sec. 6), for a BC checkpoint with a reward head.

* **Table 2**: MSE and MAE on the test ratings of the trained reward head and of three naive
  predictors (user mean, item mean, global mean of the training split).
* **Avg Reward**: the reward head's mean score of G items sampled from a policy (history excluded)
  for each of C test contexts, for the BC policy and any post-trained checkpoint, always judged by
  the BC checkpoint's reward model. Every run with a reward head also reports it as ``avg_reward``.

    python -m recbole_align.diagnostics --dataset=ml-1m-half --data_path=../shared/data \\
        --pretrained_checkpoint=saved/HSTU-bc.pth [--checkpoints="saved/PPO.pth saved/DPO.pth"] [--output_dir=.]

Other ``--key=value`` arguments (and ``--config_files``) are config overrides, as for ``run_recbole_align.py``:
give the runs' own, so that Table 2 reads the same data.
"""

import argparse
from pathlib import Path

import torch
from recbole.data.interaction import Interaction, cat_interactions
from recbole.utils import init_seed

from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import build_config, spec_of
from recbole_align.data import AlignDataset, load_dataset, split_loaders
from recbole_align.errors import AlignError
from recbole_align.memory import catalogue_rows
from recbole_align.pretrained import architecture_of, check_start, load_pretrained, read_pretrained
from recbole_align.report import markdown_table, write_table
from recbole_align.safe_write import write_text
from recbole_align.trainer.on_policy import history_items, log_policy, sample_items

PREDICTORS = ("User Mean", "Item Mean", "Global Mean", "Trained RM")


def checkpoint_model(model_class, checkpoint, config, dataset):
    """A frozen ``model_class`` built for ``config`` and ``dataset`` with the weights of ``checkpoint``."""
    model = model_class(config, dataset)
    load_pretrained(model, checkpoint, config)
    return model.to(config["device"]).eval().requires_grad_(False)


def all_cases(eval_loader, batch_size):
    """The batches of a sequential full-sort ``eval_loader`` over all its cases in order, also in a
    multi-process run (where the loader itself yields only this process's share)."""
    for start in range(0, eval_loader.sample_size, batch_size):
        yield eval_loader.collate_fn(range(start, min(start + batch_size, eval_loader.sample_size)))


@torch.no_grad()
def avg_reward(policy, judge, eval_loader, config):
    """Avg Reward = (1/(C G)) sum_c sum_g r̂(s_c, a_cg), a_cg ~ pi_policy(.|s_c) over the catalogue minus
    the case's history; r̂ is ``judge``'s reward head on its own state, c the first
    C = min(avg_reward_contexts, all) cases of ``eval_loader``, G = avg_reward_generations, and the
    draws are seeded by ``seed`` so that every policy is scored on the same footing."""
    generations, limit = config["avg_reward_generations"], config["avg_reward_contexts"]
    generator = torch.Generator(device=policy.device).manual_seed(config["seed"])
    policy.eval()
    judge.eval()
    total, count = 0.0, 0
    batch = catalogue_rows(eval_loader._dataset.item_num, config["catalogue_chunk_mb"], most=config["eval_batch_size"])
    for interaction, *_ in all_cases(eval_loader, batch):
        interaction = interaction[: limit - count].to(policy.device)
        seq_len = interaction[policy.ITEM_SEQ_LEN]
        rows = torch.arange(len(seq_len), device=policy.device)
        history = history_items(interaction[policy.ITEM_SEQ], rows, seq_len - 1)
        log_probs = log_policy(policy, policy.user_state(interaction), history)
        items = sample_items(log_probs, generations, generator=generator)
        total += judge.predict_reward(judge.user_state(interaction).unsqueeze(1), items).sum().item()
        count += len(seq_len)
        if count >= limit:
            break
    return total / (count * generations)


def rating_baselines(interactions, held_out, cases, config):
    """User-, item- and global-mean predictions of the ratings of ``cases`` from the training split:
    every interaction in ``interactions`` except the ``held_out`` (valid and test) ones. A user or
    item with no training rating gets the global mean. Arguments: Interactions with user, item, rating."""
    uid, iid, rating = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["RATING_FIELD"]

    def training_sums(field, size):
        def sums(data):
            values = data[rating].double()
            return torch.bincount(data[field], values, size), torch.bincount(data[field], minlength=size).double()

        (s_all, n_all), (s_out, n_out) = sums(interactions), sums(held_out)
        return s_all - s_out, n_all - n_out

    n_train = len(interactions) - len(held_out)
    global_mean = (interactions[rating].double().sum() - held_out[rating].double().sum()) / n_train
    predictions = {"Global Mean": global_mean.expand(len(cases))}
    for name, field in (("User Mean", uid), ("Item Mean", iid)):
        total, count = training_sums(field, 1 + int(max(interactions[field].max(), cases[field].max())))
        means = torch.where(count > 0, total / count.clamp(min=1), global_mean)
        predictions[name] = means[cases[field]]
    return predictions


@torch.no_grad()
def reward_model_errors(judge, test_loader, valid_loader, config):
    """Table 2: {predictor: {"MSE", "MAE"}} on the ratings of the test cases, for the naive
    predictors of :func:`rating_baselines` and the trained reward head of ``judge``."""
    cases = test_loader._dataset.inter_feat
    held_out = cat_interactions([cases, valid_loader._dataset.inter_feat])
    interactions = Interaction(AlignDataset(config).inter_feat)  # the same filtered, remapped interactions, unsplit
    predictions = rating_baselines(interactions, held_out, cases, config)
    judge.eval()
    predicted = []
    for interaction, *_ in test_loader:
        interaction = interaction.to(judge.device)
        predicted.append(judge.predict_reward(judge.user_state(interaction), interaction[judge.ITEM_ID]).cpu())
    predictions["Trained RM"] = torch.cat(predicted).double()
    errors = {name: predictions[name] - cases[config["RATING_FIELD"]].double() for name in PREDICTORS}
    return {name: {"MSE": (e**2).mean().item(), "MAE": e.abs().mean().item()} for name, e in errors.items()}


def run_diagnostics(dataset, pretrained_checkpoint, checkpoints=(), output_dir=".", config_dict=None,
                    config_file_list=()):
    """Table 2 for the BC checkpoint's reward head and the Avg Reward of BC and of each of
    ``checkpoints``, on the data of ``config_file_list`` and ``config_dict`` (as the runs'); writes ``diagnostics.md``, ``reward_model.csv`` and ``avg_reward.csv`` to
    ``output_dir``; returns {"reward_model": Table 2, "avg_reward": {name: score}, "n_test": N, "markdown"}."""
    bc = read_pretrained(pretrained_checkpoint)
    if spec_of(bc["config"]).post_training:
        raise AlignError(
            f"pretrained_checkpoint [{pretrained_checkpoint}] is a post-trained [{bc['config']['model']}] model: "
            f"pass its BC checkpoint as --pretrained_checkpoint and this one in --checkpoints."
        )
    if not bc["config"]["reward_head"]:
        raise AlignError(
            f"pretrained_checkpoint [{pretrained_checkpoint}] has no reward head (train BC with --reward_head=True)."
        )

    def config_of(checkpoint, path):  # each checkpoint's model built in its own shape (e.g. no reward head after Exp-RSFT)
        return build_config(bc["config"]["model"], dataset, list(config_file_list), config_dict={
            **(config_dict or {}), "pretrained_checkpoint": str(path), "backbone": bc["config"]["backbone"],
            **architecture_of(checkpoint["config"]),
        })

    config, spec = config_of(bc, pretrained_checkpoint)
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, test_data = split_loaders(config, load_dataset(config, spec.model_class))
    judge = checkpoint_model(spec.model_class, bc, config, train_data._dataset)

    errors = reward_model_errors(judge, test_data, valid_data, config)
    scores = {"BC": avg_reward(judge, judge, test_data, config)}
    for path in checkpoints:
        checkpoint = read_pretrained(path)
        check_start(checkpoint["config"], path, config)
        policy = checkpoint_model(spec.model_class, checkpoint, config_of(checkpoint, path)[0], train_data._dataset)
        scores[Path(path).stem] = avg_reward(policy, judge, test_data, config)

    n_test = len(test_data._dataset)
    table2 = [[metric, *(errors[name][metric] for name in PREDICTORS)] for metric in ("MSE", "MAE")]
    scored = [[name, score] for name, score in scores.items()]
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_table(output_dir / "reward_model.csv", ["metric", *PREDICTORS], table2)
    write_table(output_dir / "avg_reward.csv", ["policy", "avg_reward"], scored)
    contexts = min(config["avg_reward_contexts"], n_test)
    markdown = (
        f"Reward model vs naive predictors on the {n_test} test ratings of {dataset} "
        f"(means over the training split):\n\n{markdown_table(['Metric', *PREDICTORS], table2)}\n\n"
        f"Avg Reward ({config['avg_reward_generations']} generations for each of {contexts} test contexts, "
        f"judged by the reward head of {pretrained_checkpoint}):\n\n"
        f"{markdown_table(['Policy', 'Avg Reward'], scored)}\n"
    )
    write_text(output_dir / "diagnostics.md", markdown)
    return {"reward_model": errors, "avg_reward": scores, "n_test": n_test, "markdown": markdown}


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align diagnostics", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", required=True, help="dataset name")
    parser.add_argument("--pretrained_checkpoint", required=True, help="BC checkpoint with a reward head: the judge")
    parser.add_argument("--checkpoints", default="", help="space-separated post-trained checkpoints to score")
    parser.add_argument("--output_dir", default=".", help="folder for diagnostics.md and the CSV files")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, as the runs had")
    args, overrides = parse_command_line(parser, argv)
    tables = run_diagnostics(args.dataset, args.pretrained_checkpoint, args.checkpoints.split(), args.output_dir, overrides,
                             args.config_file_list)
    print(tables["markdown"])


if __name__ == "__main__":
    main()
