"""Speed peer: training seconds per epoch of RecTools' HSTUModel (rectools 0.19.0) on a RecBole .inter file.

    python benchmarks/rectools_peer.py --inter_file=../shared/data/ml-1m-half/ml-1m-half.inter --epochs=2 --threads=1

Prints the dict returned by ``rectools_hstu_epochs`` as JSON. Needs ``pip install -e '.[bench]'``.
"""

import argparse
import json
import resource
import time

import pandas as pd
import torch

TEMPERATURE = 0.05  # logits = cosine / temperature, as recbole_align/properties/model/HSTU.yaml


def rectools_hstu_epochs(
    inter_file, epochs=2, threads=1, max_len=200, d=50, n_blocks=2, n_heads=1, n_negatives=128,
    batch_size=128, dropout=0.2, lr=1e-3, seed=2020,
) -> dict:
    """Train RecTools' HSTUModel on CPU for ``epochs`` epochs and time each one.

    Data: each user's interactions sorted by timestamp, minus the last 2 (RecBole's leave-one-out
    valid and test items); every remaining interaction has weight 1. No validation is run.

    Matched: d, blocks, heads, max_len, sampled softmax with ``n_negatives`` uniform catalogue
    negatives per position, batch size, dropout (input and before W_o), Adam lr, cosine logits over
    ``TEMPERATURE``, relative time (128 log buckets) and position attention biases, seed, threads.

    Cannot match exactly:
      - Adam betas are fixed at (0.9, 0.98) by rectools (also the recbole-align HSTU config);
      - a negative equal to the target is not masked out, and padded positions are scored too;
      - training uses one shifted sequence per user, only its last ``max_len`` + 1 interactions
        (rectools drops earlier ones) and only users with at least 2 interactions;
      - determinism is Lightning's ``deterministic=True`` plus ``seed_everything(seed)``, so the
        draws differ from RecBole's even with the same seed.
    """
    try:
        import pytorch_lightning as pl
        import rectools
        from rectools import Columns
        from rectools.dataset import Dataset
        from rectools.models import HSTUModel
        from rectools.models.nn.item_net import IdEmbeddingsItemNet
    except ModuleNotFoundError as error:
        raise ImportError("rectools is not installed: pip install -e '.[bench]'") from error

    class EpochTimer(pl.Callback):
        """Wall time of every training epoch."""

        def __init__(self):
            self.seconds = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.seconds.append(time.perf_counter() - self.start)

    def trainer():
        return pl.Trainer(
            max_epochs=epochs, min_epochs=epochs, accelerator="cpu", devices=1, deterministic=True,
            callbacks=[EpochTimer()], enable_progress_bar=False, enable_model_summary=False,
            logger=False, enable_checkpointing=False,
        )

    torch.set_num_threads(threads)
    pl.seed_everything(seed, verbose=False)

    inter = pd.read_csv(inter_file, sep="\t")
    inter.columns = [column.split(":")[0] for column in inter.columns]
    inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
    train = inter[inter.groupby("user_id").cumcount(ascending=False) >= 2]
    interactions = pd.DataFrame({
        Columns.User: train["user_id"].to_numpy(),
        Columns.Item: train["item_id"].to_numpy(),
        Columns.Weight: 1.0,
        Columns.Datetime: pd.to_datetime(train["timestamp"].to_numpy(), unit="s"),
    })

    model = HSTUModel(
        n_blocks=n_blocks, n_heads=n_heads, n_factors=d, dropout_rate=dropout, session_max_len=max_len,
        loss="sampled_softmax", n_negatives=n_negatives, lr=lr, batch_size=batch_size, epochs=epochs,
        item_net_block_types=(IdEmbeddingsItemNet,), get_trainer_func=trainer,
        lightning_module_kwargs={"logits_t": TEMPERATURE}, recommend_torch_device="cpu",
    )
    model.fit(Dataset.construct(interactions))
    (timer,) = [callback for callback in model.fit_trainer.callbacks if isinstance(callback, EpochTimer)]

    return {
        "seconds_per_epoch": timer.seconds,
        "n_users": int(interactions[Columns.User].nunique()),
        "n_train_interactions": len(interactions),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rectools_version": rectools.__version__,
        "settings": {
            "epochs": epochs, "threads": threads, "max_len": max_len, "d": d, "n_blocks": n_blocks,
            "n_heads": n_heads, "loss": "sampled_softmax", "n_negatives": n_negatives,
            "batch_size": batch_size, "dropout": dropout, "optimizer": "Adam", "lr": lr,
            "adam_betas": [0.9, 0.98], "similarity": "cosine", "temperature": TEMPERATURE,
            "seed": seed, "device": "cpu",
        },
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter_file", required=True, help="RecBole atomic .inter file")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(rectools_hstu_epochs(args.inter_file, epochs=args.epochs, threads=args.threads), indent=2))
