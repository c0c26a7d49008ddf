"""Stages planned once: a command (model, dataset, config files, overrides) becomes an immutable
:class:`Plan` of stages, the BC stage when a post-training run needs one trained, then the run, each
with its finished RecBole ``Config`` and resolved model.

What a stage's configuration depends on is settled here, before its ``Config`` is built: the BC
checkpoint a resumed run continues from, the BC stage's checkpoint (reused only when what it learned
from is unchanged), the architecture of the checkpoint a post-training run starts from, a
multi-process run's checkpoint name and world size. Nothing edits a planned config afterwards (a
process of a multi-process run joins its group as RecBole's ``Config`` does, in ``compat``).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from recbole.utils import get_local_time

from recbole_align.config import build_config
from recbole_align.identity import identity_changes, run_identity, settings_digest
from recbole_align.pretrained import (
    architecture_of, check_resumed, check_start, read_pretrained, resumed_settings, stale_last_state,
)
from recbole_align.registry import AlignModel
from recbole_align.trainer.align_trainer import last_state_file

@dataclass(frozen=True)
class Stage:
    """One training run of a plan: its finished ``config`` and ``spec`` (model and trainer classes),
    ``notes`` (log lines of what the plan settled, e.g. an adopted architecture key) and, for a BC
    stage, ``publish``: where its checkpoint goes once it has finished (it trains as ``.partial.pth``,
    never reused before)."""

    config: object
    spec: AlignModel
    notes: tuple = ()
    publish: Path | None = None


@dataclass(frozen=True)
class Plan:
    stages: tuple

    @property
    def run(self):
        """The stage the command asked for (the last)."""
        return self.stages[-1]


def plan_run(model, dataset, config_file_list=None, config_dict=None):
    """The :class:`Plan` of ``model`` on ``dataset`` with the user's ``config_file_list`` and ``config_dict``
    (RecBole's layers, see config.build_config): a post-training run without ``pretrained_checkpoint``
    starts from the BC stage's checkpoint (:func:`plan_bc_stage`), trained first unless a fresh one exists."""
    files, given = list(config_file_list or []), dict(config_dict or {})
    config, spec = build_config(model, dataset, files, given)
    settled, notes, stages = {}, [], []
    if config["resume"]:
        settled.update(resumed_settings(config))
    if spec.post_training:
        start = settled.get("pretrained_checkpoint") or config["pretrained_checkpoint"]
        if start:
            start_config = read_pretrained(start)["config"]
        else:
            bc_stage, start, note = plan_bc_stage(config, spec, files, given)
            stages += [bc_stage] if bc_stage else []
            start_config = bc_stage.config if bc_stage else read_pretrained(start)["config"]
            notes.append(note)
        check_start(start_config, start, config)
        settled["pretrained_checkpoint"] = str(start)
        for key, adopted in architecture_of(start_config).items():
            if config[key] != adopted:
                settled[key] = adopted
                notes.append(f"{key} = {adopted!r} from the pretrained checkpoint (config said {config[key]!r})")
    settled.update(process_settings(config))
    if settled:
        config, spec = build_config(model, dataset, files, {**given, **settled})
    if config["resume"]:
        check_resumed(config)
    return Plan((*stages, Stage(config, spec, tuple(notes))))


def plan_bc_stage(config, spec, files, given):
    """(the BC stage, or None when a fresh checkpoint is reused; its checkpoint path; a log line) of the
    post-training run of ``config`` (``spec``): BC of the backbone on the same data and config, with a reward head if
    the method's trainer ``requires_reward_head`` (without one it reads no rating, so ``reward_noise_std`` is 0),
    saved as ``<checkpoint_dir>/<backbone>-<dataset>-bc-<key>.pth`` (``<key>``: identity.settings_digest), reused while its
    identity (recbole_align.identity) is the one planned; an interrupted BC stage resumes from its last
    validated epoch, unless it was another run."""
    backbone, dataset = config["backbone"], config["dataset"]
    bc_dict = {**given, "pretrained_checkpoint": None, "results_file": None, "resume": None}
    if getattr(spec.trainer_class, "requires_reward_head", False):
        bc_dict["reward_head"] = True
    bc_config, _ = build_config("BC", dataset, files, bc_dict)
    if not bc_config["reward_head"] and bc_config["reward_noise_std"]:
        bc_dict["reward_noise_std"] = 0.0
        bc_config, _ = build_config("BC", dataset, files, bc_dict)
    path = Path(bc_config["checkpoint_dir"]) / f"{backbone}-{dataset}-bc-{settings_digest(bc_config)}.pth"
    notes = []
    if path.is_file():
        results_file = path.with_suffix(".json")
        recorded = json.loads(results_file.read_text()).get("identity") if results_file.is_file() else None
        changes = identity_changes(recorded, run_identity(bc_config))
        if not changes:
            return None, path, f"BC stage: reusing {path}"
        notes.append(f"BC stage: not reusing {path}: {'; '.join(changes)}")
    partial = path.with_suffix(".partial.pth")
    last = Path(last_state_file(partial))
    resume = last.is_file()
    if resume and (changes := stale_last_state(last, bc_config)):
        notes.append(f"BC stage: not resuming {last}: {'; '.join(changes)}")
        resume = False
    bc_dict.update(process_settings(bc_config))
    bc_dict.update(checkpoint_file=str(partial), results_file=str(path.with_suffix(".json")),
                   resume=str(last) if resume else None)
    bc_config, bc_spec = build_config("BC", dataset, files, bc_dict)
    if bc_config["resume"]:
        resumed_settings(bc_config)  # checked as a resumed run's
    notes.append(f"BC stage: training {backbone} by behaviour cloning -> {path}")
    return Stage(bc_config, bc_spec, tuple(notes), path), path, f"{config['model']} stage: post-training from {path}"


def process_settings(config):
    """What the processes of a multi-process run (none else) must agree on before they start: the world
    size (default ``nproc``) and the checkpoint's name (every process loads the best model saved there)."""
    if not multi_process(config):
        return {}
    return {
        "world_size": config["world_size"] if config["world_size"] > 0 else config["nproc"],
        "checkpoint_file": config["checkpoint_file"] or str(
            Path(config["checkpoint_dir"]) / f"{config['model']}-{get_local_time()}.pth"
        ),
    }


def multi_process(config):
    """Whether ``config`` runs in several processes (``nproc`` > 1, or a ``world_size`` across machines)."""
    return config["single_spec"] and (config["nproc"] > 1 or config["world_size"] > 0)
