"""RecBole's Trainer with recbole-align's evaluation and bookkeeping; base of every trainer here."""

import contextlib
import os
import random
import signal
import threading
import resource
from pathlib import Path
from time import time

import numpy as np
import torch
import torch.distributed as dist
import torch.optim as optim
from recbole.trainer import Trainer
from recbole.utils import ModelType, calculate_valid_score, set_color

from recbole_align.compat import full_checkpoint_loading, load_checkpoint, trainer_on_any_device
from recbole_align.distributed import gather_cases
from recbole_align.errors import AlignError, Interrupted
from recbole_align.evaluator.cases import CASE_KEYS, CaseCollector, evaluate_cases, plain_metrics
from recbole_align.trainer.item_updates import TableAndDenseOptimizer, item_update_mode
from recbole_align.safe_write import opened_atomically


def with_precision(loss_func, mixed_precision, device):
    """``loss_func`` under autocast to bfloat16 on ``device`` (CPU and CUDA alike) when ``mixed_precision``
    is ``bf16``; else ``loss_func`` itself (fp32). Evaluation stays in fp32."""
    if mixed_precision is None:
        return loss_func

    def bf16_loss(interaction):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return loss_func(interaction)

    return bf16_loss


class StopOnRequest:
    """A train loader whose epoch ends after the batch during which ``requested()`` became true (the
    batch's optimizer step done); anything else is the loader's."""

    def __init__(self, loader, requested):
        self.loader, self.requested = loader, requested

    def __iter__(self):
        for batch in self.loader:
            yield batch
            if self.requested():
                return

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


@contextlib.contextmanager
def stop_requests():
    """While training: a function telling whether the user pressed Ctrl-C (SIGINT) once, so that the epoch
    stops after its current batch; a second Ctrl-C interrupts at once. Only in the main thread of a
    one-process run (elsewhere it always says no)."""
    pressed = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def request(signum, frame):
        pressed.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


def process_rank():
    """This process's rank in a multi-process run (0 in a run of one process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def random_states(train_data, single_process):
    """The random states of every process, rank by rank (Python's, numpy's, torch's, CUDA's and the
    train loader's shuffling): a resumed multi-process run gives each process its own back."""
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "train_data": train_data.generator.get_state(),
    }
    if single_process:
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def own_random_states(states):
    """This process's entry of :func:`random_states`' list (a checkpoint written before it was a list
    holds one dict, rank 0's; a run resumed on more processes than it had gives the extra ones the last)."""
    return states[min(process_rank(), len(states) - 1)] if isinstance(states, list) else states


class CaseGatheringCollector(CaseCollector):
    """The evaluation collector of a multi-process run: its data struct holds the per-case rows
    of every rank, in case order, so that every rank computes the metrics of all the cases exactly as
    one process does. (RecBole 1.2.1 instead averages the ranks' rounded metrics, weighted by their
    numbers of batches, and counts the cases that its DistributedSampler repeats twice.)"""

    n_cases = None  # the number of cases of the evaluation under way, set by the trainer

    def get_data_struct(self):
        struct = super().get_data_struct()
        for key in CASE_KEYS:
            if key in struct:
                struct[key] = gather_cases(struct[key].to(self.device), self.n_cases).cpu()
        return struct


def selection_split(config):
    """The results key of the valid cases that choose the best epoch (``valid_cases``)."""
    return "valid" if config["valid_cases"] == "all" else "valid_filtered"


def last_state_file(checkpoint_file):
    """Where a run whose best checkpoint is ``checkpoint_file`` keeps the state of its last validated
    epoch: ``<checkpoint>.last.pth``."""
    return str(Path(checkpoint_file).with_suffix(".last.pth"))


def save_state(state, path):
    """``torch.save`` of ``state`` to ``path`` as RecBole saves checkpoints, but atomically
    (:mod:`recbole_align.safe_write`)."""
    with opened_atomically(path) as file:
        torch.save(state, file, pickle_protocol=4)


class AlignTrainerMixin:
    """Adds to any RecBole trainer:

    * full-sort evaluation that excludes the items of the case's history (the model's input
      window, as the HSTU reference does); RecBole 1.2.1 excludes nothing for sequential models;
    * ``checkpoint_file`` (config key) to choose the checkpoint's path; by default RecBole's
      ``<model>-<time>.pth`` with the process id added (runs started together get their own);
    * a clear error when the training loss becomes NaN or infinite (RecBole checks NaN only);
    * evaluation that scores each case once (:meth:`evaluate_split`): RecBole's metrics of all the
      cases of a split and of its rating-filtered ones from the same per-case ranks, the ranks kept;
    * an ``epoch_log`` (one dict per epoch: loss, seconds, filtered valid metrics, the metrics of
      ``epoch_test_loader`` (the test cases, filtered and unfiltered, from one pass: never used for
      model selection) and any statistics a post-training trainer adds) that ends up in the results JSON;
    * AdamW/Adam betas from the ``optimizer_betas`` config key;
    * checkpoint loading that works on torch >= 2.6 (see :mod:`recbole_align.compat`);
    * metrics as plain floats (numpy 2 logs its scalars as ``np.float64(...)``);
    * resuming: after each validated epoch the full training state (RecBole's checkpoint keys plus
      :meth:`resume_state`) goes to :func:`last_state_file`, which ``resume_checkpoint`` continues
      exactly (see ``resume`` in recbole_align/properties/overall.yaml).
    * multi-process runs on CPU too, with the metrics of all the cases (:class:`CaseGatheringCollector`),
      and the best checkpoint loaded only once rank 0 has written it.
    """

    def __init__(self, config, model):
        with trainer_on_any_device():
            super().__init__(config, model)
        self.eval_collector = (CaseCollector if config["single_spec"] else CaseGatheringCollector)(config)
        if config["mixed_precision"] not in (None, "bf16"):
            raise AlignError(f"mixed_precision must be bf16 or ~ (fp32), got {config['mixed_precision']!r}.")
        self.epoch_log = []
        self.epoch_test_loader = None  # the test cases, evaluated after every validation (epoch_test_metrics)
        self.last_epoch_test = None  # the SplitResult of the last epoch's test pass
        self.resumed_rng = None  # the random states to restore when fit() continues a resumed run
        self.earlier_fit_seconds = 0.0  # fit()'s seconds in the earlier processes of a resumed run
        self.fit_started = None  # when this process's fit() began
        self.fit_seconds = None  # fit()'s seconds in all, once it has returned
        self.identity = None  # the run's identity (recbole_align.identity), set by the run before fit()
        if config["checkpoint_file"]:
            self.saved_model_file = config["checkpoint_file"]
        else:  # RecBole's <model>-<time>.pth, which two runs started in the same second would share
            path = Path(self.saved_model_file)
            self.saved_model_file = str(path.with_name(f"{path.stem}-{os.getpid()}{path.suffix}"))

    sparse_item_updates = True  # its loss reads the item rows of the batch only (recbole_align.trainer.item_updates)

    def _build_optimizer(self, **kwargs):
        """The optimizer of ``item_updates`` (logged): RecBole's (:meth:`_parameter_optimizer`) for every
        parameter, or lazy Adam for the item table beside it for the others."""
        mode, why = item_update_mode(self.config, self.model, self.sparse_item_updates)
        self.logger.info(f"item table updates: {mode} ({why})")
        if mode == "dense":
            return self._parameter_optimizer(**kwargs)
        table = self.model.use_sparse_item_updates()
        dense = self._parameter_optimizer(**{**kwargs, "params": [p for p in self.model.parameters() if p is not table]})
        return TableAndDenseOptimizer(dense, table, kwargs.get("learning_rate", self.learning_rate),
                                      self.config["optimizer_betas"] or (0.9, 0.999))

    def _parameter_optimizer(self, **kwargs):
        """RecBole's optimizer, with AdamW/Adam betas from ``optimizer_betas``."""
        betas = self.config["optimizer_betas"]
        learner = kwargs.get("learner", self.learner).lower()
        if betas is None or learner not in ("adam", "adamw"):
            return super()._build_optimizer(**kwargs)
        optimizer_class = optim.AdamW if learner == "adamw" else optim.Adam
        return optimizer_class(
            kwargs.get("params", self.model.parameters()),
            lr=kwargs.get("learning_rate", self.learning_rate),
            betas=tuple(betas),
            weight_decay=kwargs.get("weight_decay", self.weight_decay),
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.current_epoch = epoch_idx
        start = time()
        loss_func = with_precision(loss_func or self.model.calculate_loss, self.config["mixed_precision"], self.device)
        losses = super()._train_epoch(StopOnRequest(train_data, self.stop_requested), epoch_idx, loss_func, show_progress)
        if self.stop_requested():
            raise Interrupted(self.how_to_resume(epoch_idx))
        total = sum(losses) if isinstance(losses, tuple) else losses
        self.epoch_log.append(
            {"epoch": epoch_idx, "train_loss": float(total), "train_seconds": time() - start}
        )
        return losses

    def _check_nan(self, loss):
        if not torch.isfinite(loss):
            last_good = self.saved_model_file if os.path.isfile(self.saved_model_file) else "none saved yet"
            raise AlignError(
                f"[{self.config['model']}] training loss became {loss.item()} in epoch {self.current_epoch}; "
                f"stopped. Last good checkpoint: {last_good}. Try a lower learning_rate."
            )

    def _valid_epoch(self, valid_data, show_progress=False):
        """The valid score of the epoch: on the rating-filtered valid cases (``valid_data`` is their
        loader), or with ``valid_cases: all`` on every case of ``valid_data``, whose filtered metrics
        come from the same pass."""
        if self.config["valid_cases"] == "all":
            split = self.evaluate_split(valid_data, "valid")
            valid_result, filtered = split.metrics, split.filtered_metrics
            valid_score = calculate_valid_score(valid_result, self.valid_metric)
        else:
            valid_score, valid_result = super()._valid_epoch(valid_data, show_progress)
            filtered = valid_result = plain_metrics(valid_result)
        if self.epoch_log:
            entry = self.epoch_log[-1]
            entry["valid_filtered"] = filtered
            if self.config["valid_cases"] == "all":
                entry["valid"] = valid_result
            if self.epoch_test_loader is not None:
                self.last_epoch_test = self.evaluate_split(self.epoch_test_loader, "test")
                entry["test"], entry["test_filtered"] = self.last_epoch_test.metrics, self.last_epoch_test.filtered_metrics
        return valid_score, valid_result

    def evaluate_split(self, loader, phase, load_best_model=False):
        """One scoring pass over the cases of a full-sort ``loader`` of split ``phase``: a
        :class:`~recbole_align.evaluator.cases.SplitResult` with RecBole's metrics of all its cases and
        of its rating-filtered ones, and each case's rank."""
        metrics = self.evaluate(loader, load_best_model=load_best_model)
        return evaluate_cases(self.evaluator, self.eval_collector.last_struct, metrics, loader, self.config, phase)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
            history = interaction[self.model.ITEM_SEQ].to(scores.device)
            scores.scatter_(1, history, -np.inf)
        return interaction, scores, positive_u, positive_i

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not self.config["single_spec"]:
            self.eval_collector.n_cases = eval_data.sample_size
            if load_best_model:
                dist.barrier()  # once all processes are here, each machine's first one has saved it
        with full_checkpoint_loading():
            result = super().evaluate(eval_data, load_best_model, model_file, show_progress)
        return result and type(result)((metric, float(value)) for metric, value in result.items())

    def resume_state(self, rng):
        """What continuing exactly needs beyond RecBole's checkpoint: the best checkpoint's path and
        result, the epoch log and ``rng``, every process's random states (:func:`random_states`), and
        ``identity``, everything that shaped the run (recbole_align.identity: a resume of another is refused).
        Subclasses with their own training state extend it and :meth:`load_resume_state`."""
        return {
            "best_checkpoint": self.saved_model_file,
            "best_valid_result": self.best_valid_result,
            "epoch_log": self.epoch_log,
            "rng": rng,
            "identity": self.identity,
            "fit_seconds": self.seconds_in_fit(),
        }

    def load_resume_state(self, state):
        """Take back :meth:`resume_state`; the random states are restored when fit() starts."""
        self.saved_model_file = state["best_checkpoint"]
        self.best_valid_result = state["best_valid_result"]
        self.epoch_log = state["epoch_log"]
        self.resumed_rng = state["rng"]
        self.earlier_fit_seconds = state.get("fit_seconds", 0.0)  # files written before it was kept: 0

    def _checkpoint_state(self, epoch):
        """What RecBole's ``_save_checkpoint`` saves for ``epoch``."""
        return {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's, written atomically (:func:`save_state`): a failed write leaves the previous checkpoint."""
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_state(self._checkpoint_state(epoch), saved_model_file)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _save_last_state(self, epoch, rng):
        """The keys of RecBole's ``_save_checkpoint`` for this epoch plus :meth:`resume_state`, written
        atomically (an interruption while writing leaves the previous epoch's file)."""
        state = {
            **self._checkpoint_state(epoch),
            "resume": self.resume_state(rng),
        }
        save_state(state, last_state_file(self.saved_model_file))

    def _map_reduce(self, result, num_sample):
        """The result itself: it is already over every rank's cases (see CaseGatheringCollector)."""
        return result

    def resume_checkpoint(self, resume_file):
        """RecBole's resume (epoch, early-stopping counter, best score, model, optimizer) from a
        :func:`last_state_file`, then this trainer's :meth:`resume_state`."""
        with full_checkpoint_loading():
            super().resume_checkpoint(resume_file)
            self.load_resume_state(load_checkpoint(resume_file)["resume"])

    stop_requested = staticmethod(lambda: False)  # set while fit() runs (Ctrl-C)

    def how_to_resume(self, epoch):
        """The line that an interrupted run prints: what is saved and the command that continues it."""
        last = last_state_file(self.saved_model_file)
        if not os.path.isfile(last):
            return f"stopped in epoch {epoch} before any epoch was saved: nothing to resume, run the command again."
        if self.saved_model_file.endswith(".partial.pth"):  # a BC stage, which a rerun continues by itself
            return f"stopped in epoch {epoch}; the BC stage continues from [{last}] when the same command runs again."
        return f"stopped in epoch {epoch}; to continue from its last saved epoch, run the same command with --resume={last}"

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """RecBole's fit, saving the last state after each validated epoch; a resumed run restores the
        random states first, and one whose training had ended (``epochs`` reached or stopped early)
        trains nothing, leaving its best checkpoint to the evaluation. Ctrl-C stops it after the current
        batch (:class:`Interrupted`, with the command that resumes it)."""
        single = self.config["single_spec"]
        self.fit_started = time()
        with stop_requests() if single else contextlib.nullcontext(lambda: False) as requested:
            self.stop_requested = requested
            try:
                return self._fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            finally:
                del self.stop_requested
                self.fit_seconds = self.seconds_in_fit()

    def seconds_in_fit(self):
        """fit()'s seconds so far over every process of the run (a resumed run's earlier ones included)."""
        return self.earlier_fit_seconds + (time() - self.fit_started if self.fit_started is not None else 0.0)

    def _fit(self, train_data, valid_data, verbose, saved, show_progress, callback_fn):
        if self.resumed_rng is not None:
            if self.start_epoch >= self.epochs or self.cur_step > self.stopping_step:
                self.logger.info(f"training ended before epoch {self.start_epoch}: nothing to resume, evaluating")
                return self.best_valid_score, self.best_valid_result
            rng = own_random_states(self.resumed_rng)
            random.setstate(rng["random"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            train_data.generator.set_state(rng["train_data"])

        def after_validation(epoch_idx, valid_score):
            if saved:
                rng = random_states(train_data, self.config["single_spec"])  # every process takes part
                if self.config["single_spec"] or self.config["local_rank"] == 0:  # as _save_checkpoint
                    self._save_last_state(epoch_idx, rng)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        return super().fit(train_data, valid_data, verbose, saved, show_progress, after_validation)

    def best_epoch(self):
        """The epoch of the saved (best) checkpoint: the last one with the best valid score (of the
        ``valid_cases``), as RecBole's ``early_stopping`` keeps ties (None without validation)."""
        sign, split = (1 if self.valid_metric_bigger else -1), selection_split(self.config)
        best_epoch, best_score = None, -np.inf
        for entry in self.epoch_log:
            if split in entry and sign * entry[split][self.valid_metric] >= best_score:
                best_epoch, best_score = entry["epoch"], sign * entry[split][self.valid_metric]
        return best_epoch

    def peak_memory_mb(self):
        """Peak memory of this process: GPU memory on CUDA, resident set size otherwise."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class AlignTrainer(AlignTrainerMixin, Trainer):
    """The trainer of behaviour cloning and of RecBole baselines run through recbole-align."""


def with_align_evaluation(trainer_class):
    """``trainer_class`` itself if it already evaluates like recbole-align, else a subclass that does."""
    if issubclass(trainer_class, AlignTrainerMixin):
        return trainer_class
    if trainer_class is Trainer:
        return AlignTrainer
    return type(f"Align{trainer_class.__name__}", (AlignTrainerMixin, trainer_class), {})
