"""Execution: each run a process of ``python -m recbole_align`` whose results JSON is named by a hash of
the command's settings for it, reused when its recorded identity is the one planned here
(recbole_align.identity), resumed from its last epoch when interrupted, ``jobs`` at a time."""

import hashlib
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from time import time

import numpy as np

from recbole_align.config import command_line_overrides
from recbole_align.data import stale_inputs
from recbole_align.errors import AlignError
from recbole_align.experiment.plan import bc_checkpoint_of, kind
from recbole_align.identity import identity_changes, run_identity
from recbole_align.pretrained import stale_last_state
from recbole_align.stages import plan_run
from recbole_align.report import COST_KEYS
from recbole_align.trainer.align_trainer import last_state_file

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # where the runs' processes import recbole_align from


def run_hash(run, dataset, config_files, user_args):
    """12 hex digits naming everything that decides a run's results (model, data, config, seed)."""
    files = {str(f): Path(f).read_text() for f in config_files}
    key = {"model": run.model, "dataset": dataset, "seed": run.seed, "settings": run.settings,
           "files": files, "args": sorted(user_args)}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def planned_config(run, dataset, output_dir, config_files, user_args):
    """The Config of ``run`` as its process will plan it (its ``--key=value`` arguments typed the same way)."""
    overrides = command_line_overrides([*setting_args(run), *user_args])
    return plan_run(run.model, dataset, [str(f) for f in config_files], overrides).run.config


def setting_args(run):
    """``run``'s settings as the ``--key=value`` arguments of its process."""
    return [f"--{key}={value}" for key, value in run.settings.items()]


def reuse_changes(run, results_file, identity, reuse_older):
    """Why the finished run of ``results_file`` is not ``run`` with ``identity`` (identity.identity_changes);
    none if it is. A run recorded before runs recorded their identity is another run, unless
    ``reuse_older``: then it is reused while the data files and start checkpoint it recorded (if any) are
    unchanged, and marked ``run.older``."""
    recorded = run.results.get("identity")
    if recorded is not None or not reuse_older:
        return identity_changes(recorded, identity)
    run.older = True
    return stale_inputs(results_file) if "inputs" in run.results else []


def reused_twin(run, twins, identity, reuse_older):
    """Whether one of ``twins`` (results JSONs of the same hash under another row's label: the same model, seed
    and settings, as a swept λ that is the tuned one) is ``run`` as it is (:func:`reuse_changes`): then ``run``
    takes its results. One that is not is left to its own row; ``run`` keeps its own name."""
    for twin in twins:
        try:
            run.results = json.loads(twin.read_text())
        except (OSError, ValueError):  # its own row is training it again
            continue
        if not reuse_changes(run, twin, identity, reuse_older):
            run.results_file = twin
            return True
    run.results, run.older = None, False
    return False


def execute(run, dataset, output_dir, config_files, user_args, reuse_older=False):
    """Run ``run`` in its own process, or reuse its results JSON when it is the run planned (:func:`reuse_changes`),
    or another row's run with the same hash (:func:`reused_twin`); returns the seconds it took (0 if reused)."""
    name = run.label.replace(" λ=", "-lambda").replace(" ", "-")
    digest = run_hash(run, dataset, config_files, user_args)
    stem = f"{name}-seed{run.seed}-{digest}"
    results_file, log_file = output_dir / "runs" / f"{stem}.json", output_dir / "runs" / f"{stem}.log"
    run.settings["checkpoint_file"] = str(output_dir / "checkpoints" / f"{stem}.pth")
    run.results_file = results_file
    last_state = Path(last_state_file(run.settings["checkpoint_file"]))  # an interrupted run goes on from there
    try:
        config = planned_config(run, dataset, output_dir, config_files, user_args)
    except AlignError as error:
        run.error = str(error)
        return 0.0
    identity = run_identity(config, cwd=output_dir)
    twins = sorted((output_dir / "runs").glob(f"*-seed{run.seed}-{digest}.json"))
    if not results_file.is_file() and reused_twin(run, twins, identity, reuse_older):
        return 0.0
    if results_file.is_file():
        run.results = json.loads(results_file.read_text())
        changes = reuse_changes(run, results_file, identity, reuse_older)
        if not changes:
            return 0.0
        print(f"{run.label} seed {run.seed}: running again, {'; '.join(changes)}", flush=True)
        run.results, run.older = None, False
        results_file.unlink()
        last_state.unlink(missing_ok=True)  # its last state is the old run's finished training
    if last_state.is_file() and (changes := stale_last_state(last_state, config, cwd=output_dir)):
        print(f"{run.label} seed {run.seed}: not resuming {last_state.name}, {'; '.join(changes)}", flush=True)
        last_state.unlink()
    run.resumed = last_state.is_file()
    start = time()
    command = [
        sys.executable, "-m", "recbole_align", f"--model={run.model}", f"--dataset={dataset}",
        *([f"--config_files={' '.join(str(f) for f in config_files)}"] if config_files else []),
        *setting_args(run), *user_args,
        f"--results_file={results_file}", *([f"--resume={last_state}"] if run.resumed else []),
        *([] if any(arg.startswith("--show_progress=") for arg in user_args) else ["--show_progress=False"]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))))}
    with open(log_file, "a" if run.resumed else "w") as log:
        process = subprocess.run(command, cwd=output_dir, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if process.returncode == 0 and results_file.is_file():
        run.results = json.loads(results_file.read_text())
    else:
        lines = log_file.read_text().strip().splitlines() or ["no output"]
        run.error = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
    return time() - start


def training_costs(checkpoint):
    """COST_KEYS of the run that trained ``checkpoint``, from the results JSON it wrote beside it (None
    each when there is none): a given BC checkpoint's costs, which its 0-epoch evaluation does not have."""
    trained = Path(checkpoint).with_suffix(".json")
    values = json.loads(trained.read_text()) if trained.is_file() else {}
    return {key: values.get(key) for key in COST_KEYS}


def remaining_seconds(runs, spent):
    """Estimated seconds of ``runs``: the mean of the finished runs with the same label (another
    seed's), else of their kind, else of all runs. ``spent``: {label or kind: [seconds]}."""
    overall = [s for key, seconds in spent.items() if key in ("BC", "post", "baseline") for s in seconds]
    if not overall:
        return 0.0
    return sum(np.mean(spent.get(run.label) or spent.get(kind(run), overall)) for run in runs)


def execute_all(runs, baselines, dataset, output_dir, config_files, user_args, stage="", jobs=1, reuse_older=False):
    """Run ``runs``, ``jobs`` processes at a time: the BC runs and the baselines first, then every
    post-training run from its seed's BC; printing progress. ``reuse_older``: see :func:`reuse_changes`."""
    start, spent, done, lock = time(), {}, [0], threading.Lock()

    def one(run):
        if run.label != "BC" and run.model not in baselines:
            bc = next(r for r in runs if r.label == "BC" and r.seed == run.seed)
            if bc.results is None:
                run.error = f"its BC run failed ({bc.error})"
                with lock:
                    done[0] += 1
                    print(f"{stage}[{done[0]}/{len(runs)}] {run.label} seed {run.seed}: skipped, {run.error}", flush=True)
                return
            run.settings["pretrained_checkpoint"] = bc_checkpoint_of(bc.results)
        seconds = execute(run, dataset, output_dir, config_files, user_args, reuse_older)
        if run.label == "BC" and run.model != "BC" and run.results is not None:
            run.results.update(training_costs(run.results["pretrained_checkpoint"]))
        with lock:
            done[0] += 1
            if seconds:
                for key in {run.label, kind(run)}:
                    spent.setdefault(key, []).append(seconds)
            left = remaining_seconds([r for r in runs if r.results is None and r.error is None], spent) / jobs
            status = (f"failed: {run.error}" if run.error else
                      f"test_filtered ndcg@10 {run.results['test_filtered']['ndcg@10']:.4f}"
                      + ((" (reused, older)" if run.older else " (reused)") if not seconds else f" in {seconds:.0f} s" + (" (resumed)" if run.resumed else "")))
            print(f"{stage}[{done[0]}/{len(runs)}] {run.label} seed {run.seed}: {status}; elapsed {time() - start:.0f} s, "
                  f"~{left:.0f} s left", flush=True)

    first = [run for run in runs if run.label == "BC" or run.model in baselines]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for group in (first, [run for run in runs if not any(run is f for f in first)]):
            list(pool.map(one, group))
