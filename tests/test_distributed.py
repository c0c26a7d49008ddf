"""Multi-process runs (RecBole's distributed mode) on 2 CPU processes with the gloo backend (2 GPUs with nccl
under RECBOLE_ALIGN_TEST_DEVICE=cuda)."""

import json
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import TEST_DEVICE, run_cli, run_in_process, tiny

from recbole_align.compat import full_checkpoint_loading, load_checkpoint
from recbole_align import diagnostics, quick_start
from recbole_align.recommend import recommend
from recbole_align.pretrained import architecture_of, read_pretrained

from recbole_align.config import build_config, command_line_overrides
from recbole_align.data import EVAL_SPLITS, load_dataset, split_loaders
from recbole_align.trainer import AlignTrainer
from recbole_align.trainer.align_trainer import own_random_states, random_states
from recbole_align.trainer.reward_weighted import reward_weighted_loss


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class PositionTable(torch.nn.Module):
    """A stand-in for a model's position_losses: the loss at (user, position) is softplus(table[user, position])."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.linspace(-2, 2, 20).reshape(4, 5))

    def position_losses(self, batch):
        losses = torch.nn.functional.softplus(self.table[batch["users"]])
        return losses, batch["mask"][batch["users"]], batch["ratings"][batch["users"]]


BATCH = {  # 4 users; user 0 and 1 hold 9 valid positions, users 2 and 3 hold 3; tied ratings at DRPO's cut
    "mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool(),
    "ratings": torch.tensor([[5, 4, 4, 2, 1], [3, 4, 5, 1, 0], [4, 4, 0, 0, 0], [1, 0, 0, 0, 0]]).float(),
}
SETTINGS = {
    "reward_max": 5.0, "reward_min": 1.0, "reward_lambda": 0.5, "rescale_rewards": False, "standardize_rewards": False,
    "drpo_variant": "adaptive", "drpo_keep_fraction": 0.5, "drpo_threshold": None, "drpo_tie_margin": 0.1, "drpo_beta": 0.05,
}
METHODS = [("exp", "mean"), ("linear", "sum"), ("drpo", "mean"), ("drpo", "sum")]


def batch_gradients(users):
    """The table's gradient of each method's loss on the batch of ``users``, rank 0's DRPO tie-breaks drawn
    from seed 0; averaged over the ranks as DDP does in a multi-process run."""
    gradients = []
    for weighting, normalization in METHODS:
        model = PositionTable()
        torch.manual_seed(0)
        reward_weighted_loss(model, {**BATCH, "users": users}, weighting, SETTINGS, normalization)[0].backward()
        if dist.is_initialized():
            dist.all_reduce(model.table.grad)
            model.table.grad /= dist.get_world_size()
        gradients.append(model.table.grad)
    return gradients


def _rank_gradients(rank, port, output):
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://localhost:{port}")
    gradients = batch_gradients(torch.tensor([[0, 1], [2, 3]][rank]))
    if rank == 0:
        torch.save(gradients, output)
    dist.destroy_process_group()


class ShuffledLoader:
    """The part of a train loader that random_states reads: its shuffling generator."""

    def __init__(self, seed):
        self.generator = torch.Generator().manual_seed(seed)


def _rank_random_states(rank, port, output):
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://localhost:{port}")
    torch.manual_seed(100 + rank)
    states = random_states(ShuffledLoader(200 + rank), single_process=False)
    own = torch.get_rng_state()
    restored = own_random_states(states)["torch"]
    if rank == 1:
        torch.save({"states": states, "own": own, "restored": restored}, output)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_multi_process_checkpoint_keeps_every_process_random_states(tmp_path):
    """The last state of a multi-process run holds the random states of every rank (gathered), and each
    rank of the resumed run takes its own (rank 0's in every rank gave all ranks the same negatives)."""
    output = tmp_path / "states.pt"
    mp.spawn(_rank_random_states, args=(free_port(), output), nprocs=2)
    saved = torch.load(output, weights_only=False)
    states = saved["states"]
    assert len(states) == 2 and not torch.equal(states[0]["torch"], states[1]["torch"])
    assert torch.equal(states[1]["torch"], saved["own"]) and torch.equal(saved["restored"], saved["own"])
    assert states[0]["train_data"].tolist() != states[1]["train_data"].tolist()


@pytest.mark.slow
def test_reward_weighted_gradient_is_the_whole_batch_gradient_across_ranks(tmp_path):
    """Ranks with unequal numbers of positions: DDP's mean of their gradients is the gradient of the
    whole batch's loss in one process (DRPO's top half and both normalisations taken over the batch)."""
    mp.spawn(_rank_gradients, args=(free_port(), tmp_path / "grads.pt"), nprocs=2)
    for method, two, one in zip(METHODS, torch.load(tmp_path / "grads.pt"), batch_gradients(torch.arange(4))):
        assert torch.allclose(two, one, atol=1e-6), method


def evaluate_in_one_process(checkpoint, data_path, tmp_path, monkeypatch):
    """The metrics of each of EVAL_SPLITS of the HSTU weights in ``checkpoint``, evaluated by one process."""
    monkeypatch.chdir(tmp_path)  # RecBole's tensorboard folder
    config_dict = {**command_line_overrides(tiny()), "data_path": str(data_path)}
    architecture = architecture_of(read_pretrained(checkpoint)["config"])
    config, spec = build_config("HSTU", "ml-100k-slice", config_dict={**config_dict, **architecture})
    train_data, valid_data, test_data = split_loaders(config, load_dataset(config, spec.model_class))
    trainer = AlignTrainer(config, spec.model_class(config, train_data._dataset).to(config["device"]))
    with full_checkpoint_loading():
        trainer.evaluate(test_data, model_file=checkpoint)  # loads the weights
    metrics = {}
    for split, loader in (("valid", valid_data), ("test", test_data)):
        result = trainer.evaluate_split(loader, split)
        metrics[split], metrics[f"{split}_filtered"] = result.metrics, result.filtered_metrics
    return {split: metrics[split] for split in EVAL_SPLITS}


two_devices = pytest.mark.skipif(
    TEST_DEVICE == "cuda" and torch.cuda.device_count() < 2, reason="2 processes on CUDA need 2 GPUs (nccl)"
)


@pytest.fixture(scope="module")
def drpo_two_processes(tmp_path_factory, ml100k_slice):
    """DRPO on 2 gloo processes, after its BC stage (with a reward head) on 2 processes (the same port, one
    after the other)."""
    cwd = tmp_path_factory.mktemp("distributed")
    process, results = run_cli(
        cwd, "--model=DRPO", "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}", *tiny(), "--nproc=2",
        f"--port={free_port()}", "--reward_head=True",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    return results


@pytest.mark.slow
@two_devices
def test_bc_and_drpo_train_on_two_processes(drpo_two_processes):
    results = drpo_two_processes
    backend = "nccl" if TEST_DEVICE == "cuda" else "gloo"
    assert results["config"]["world_size"] == 2 and results["config"]["dist_backend"] == backend
    assert results["epochs_run"] == 1 and 0 < results["epoch_log"][0]["drpo_keep_fraction"] <= 1
    bc_results = json.loads(Path(results["pretrained_checkpoint"]).with_suffix(".json").read_text())
    assert bc_results["config"]["world_size"] == 2 and bc_results["n_test"] == 60


@pytest.mark.slow
@two_devices
def test_two_process_metrics_equal_one_process_evaluation(drpo_two_processes, ml100k_slice, tmp_path, monkeypatch):
    """The metrics gathered from both processes are those of all the cases: one process evaluating the
    saved weights finds the same values (RecBole 1.2.1's own gathering counts padded cases twice)."""
    bc_checkpoint = drpo_two_processes["pretrained_checkpoint"]
    bc_results = json.loads(Path(bc_checkpoint).with_suffix(".json").read_text())
    for results, checkpoint in ((bc_results, bc_checkpoint), (drpo_two_processes, drpo_two_processes["checkpoint"])):
        one_process = evaluate_in_one_process(checkpoint, ml100k_slice, tmp_path, monkeypatch)
        assert one_process == {split: results[split] for split in EVAL_SPLITS}


@pytest.mark.slow
@two_devices
def test_recommend_and_post_training_take_checkpoints_of_a_multi_process_run(drpo_two_processes, ml100k_slice, tmp_path):
    checkpoint, bc = drpo_two_processes["checkpoint"], drpo_two_processes["pretrained_checkpoint"]
    assert not load_checkpoint(checkpoint)["config"]["single_spec"]  # saved with its two processes' settings
    frame = recommend(checkpoint, "ml-100k-slice", ["1", "7"], topk=5, data_path=ml100k_slice)
    assert list(frame["user_id"]) == ["1"] * 5 + ["7"] * 5
    status, lines = run_in_process(tmp_path, quick_start.main, "--model=ExpRSFT", "--dataset=ml-100k-slice",
                                   f"--data_path={ml100k_slice}", f"--pretrained_checkpoint={bc}", *tiny())
    assert status == 0, lines
    status, lines = run_in_process(tmp_path, diagnostics.main, "--dataset=ml-100k-slice", f"--data_path={ml100k_slice}",
                                   f"--pretrained_checkpoint={bc}", f"--checkpoints={checkpoint}", "--state=ERROR",
                                   f"--output_dir={tmp_path / 'diagnostics'}")
    assert status == 0, lines
    scores = pd.read_csv(tmp_path / "diagnostics" / "avg_reward.csv", index_col="policy")["avg_reward"]
    assert scores[Path(checkpoint).stem] == pytest.approx(drpo_two_processes["avg_reward"])  # what rank 0 measured
