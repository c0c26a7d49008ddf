"""The experiment harness: the Exp-RSFT paper's comparison, with seeds, tuning, the λ sweep, RecBole
baselines, per-epoch traces, plots and costs (``recbole-align benchmark``). Its parts are in
:mod:`recbole_align.experiment`: the one table of methods, planning, execution, aggregation, the report.

    python -m recbole_align.benchmark --dataset=ml-1m-half --data_path=../shared/data --seeds="[2020,2021,2022]"
    python -m recbole_align.benchmark --dataset=ml-100k --seeds="[2020,2021,2022]" --tune --baselines="[]"
    python -m recbole_align.benchmark --dataset=ml-100k --pretrained_checkpoint=saved/bc.pth --methods="[PPO]" --trace

For each seed: BC of the backbone (``--backbone``, default HSTU) is trained once, with the reward
head (or ``--pretrained_checkpoint`` is taken as every seed's BC, its row that checkpoint evaluated by
a 0-epoch run), and every post-training method starts from that checkpoint and trains for the fixed
budget of ``--epochs`` (30, the paper's; early stopping off); RSFT runs twice, on raw and on [0,
1]-rescaled ratings; ``--sweep_lambda`` adds an Exp-RSFT row per λ (at Exp-RSFT's tuned settings
when tuned). With ``--tune``, every post-training row first gets the same grid of 8 trials on the first
seed (SHARED_GRID x its method's key in METHOD_TABLE; without the values a row's trainer refuses), chosen on the filtered valid NDCG@10, and every seed then runs at the choice;
``--tuned_from`` takes the choice of another benchmark's tuning.csv instead (another dataset's, untuned here). The
RecBole baselines train with RecBole's own pipeline for at most ``--baseline_epochs`` epochs. Every
run is a process of ``python -m recbole_align`` whose results JSON (and log) is kept under
``--output_dir``, named ``<run>-seed<seed>-<hash>.json`` where the hash covers the run's model,
dataset, config files and settings (and, through the BC checkpoint's name, BC's): rerunning the
command reuses a run whose JSON exists and records the identity planned for it now (settings after
every yaml layer, data files, start checkpoint, results version of the code: recbole_align.identity),
trains it again otherwise, and continues an interrupted run from its last epoch, so an interrupted
benchmark resumes. Runs recorded before runs recorded their identity are trained again, or reused
with ``--reuse_older_runs`` and marked in the tables. One invocation at a time uses an output folder
(a lock). A failed run is reported and left out of the tables.

Writes to ``--output_dir`` (tables and plots through :mod:`recbole_align.report`): ``table.md``
(Table 3 on the rating-filtered test cases at the final epoch of the budget and at the best
validation epoch, the unfiltered metrics, the reward model's Table 2, the cost table, the λ sweep,
the tuning trials and, with ``--trace``, every post-training run's per-epoch table; mean ± std over
seeds, % change from BC, best in bold), ``runs.csv`` (one row per run: every split's metrics at the
best and the final epoch, Avg Reward, costs), ``table.csv`` (best epoch), ``table_final.csv``,
``unfiltered.csv``, ``reward_model.csv``, ``cost.csv``, ``tuning.csv``, ``epochs.png`` (filtered
valid and test NDCG@10 per epoch of every method, the paper's Figure 2), ``baselines.png`` and
``lambda_sweep.png`` (Figure 3, final epoch). Any other ``--key=value`` is a config override for
every run; BC trains to its plateau (``experiment.plan.BC_PLATEAU``), or exactly ``--bc_epochs``.
"""

import argparse
import ast
import contextlib
import fcntl
import os
from pathlib import Path
from time import time

from recbole_align.checks import is_number
from recbole_align.cli import exit_on_error, parse_command_line
from recbole_align.config import command_line_overrides, configured_value
from recbole_align.errors import AlignError
from recbole_align.experiment.aggregate import chosen_in, tuning_choice
from recbole_align.experiment.jobs import execute_all
from recbole_align.experiment.methods import BASELINES, METHODS, all_rows, grid, method_rows
from recbole_align.experiment.plan import given_bc, plan, tuning_plan
from recbole_align.experiment.tables import write_outputs


def parse_list(text, name, kind=str):
    """'[a,b]' or 'a,b' -> [kind(a), kind(b)], or a clear error."""
    try:
        values = ast.literal_eval(text)
        values = list(values) if isinstance(values, (list, tuple)) else [values]
    except (ValueError, SyntaxError):
        values = [v for v in text.strip("[]").split(",") if v.strip()]
    try:
        values = [kind(v.strip() if isinstance(v, str) else v) for v in values]
    except ValueError:
        values = []
    if not values:
        raise AlignError(f"--{name} must be a non-empty list, e.g. \"[a,b]\"; got {text!r}.")
    return values


def parse_lambdas(text, name="--sweep_lambda"):
    """"[0.1, 0.5, 2]" -> [0.1, 0.5, 2] (sorted); every λ must be a number > 0, else an error naming
    the option ``name``."""
    try:
        values = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        values = None
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if not values or not all(is_number(v) and v > 0 for v in values):
        raise AlignError(f"{name} must be a list of numbers > 0, e.g. \"[0.1,0.5,2]\"; got {text!r}.")
    return sorted(values)


def parse_budgets(text, baselines):
    """``--baseline_epochs``: "N" (every baseline) or "Model:N,...,N" (a budget per model, N for the
    rest; RecBole's 300 when no bare N) -> {baseline: epochs}, or a clear error."""
    default, budgets = 300, {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, _, value = entry.rpartition(":")
        if not value.isdigit() or int(value) < 1 or (name and name not in baselines):
            raise AlignError(f"--baseline_epochs takes N or Model:N entries (N > 0, Model among --baselines {baselines}); "
                             f"got {entry!r}.")
        if name:
            budgets[name] = int(value)
        else:
            default = int(value)
    return {b: budgets.get(b, default) for b in baselines}


@contextlib.contextmanager
def folder_lock(output_dir):
    """Hold ``output_dir/.benchmark.lock`` (``flock``, with this process's pid in it) for the block, so that two
    invocations never train the same runs; the OS releases it when the process ends (no stale lock). While
    another process holds it: an AlignError at once."""
    path = Path(output_dir) / ".benchmark.lock"
    try:
        lock = open(path, "a+")
    except OSError as error:
        raise AlignError(f"cannot write [{path}]: {error.strerror}") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise AlignError(f"--output_dir [{output_dir}] is in use by another benchmark (pid {holder}): wait for it "
                             f"to end, or give another --output_dir.") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def run_benchmark(args, user_args):
    """Plan, (tune,) run (resuming) and tabulate; returns the table.md text."""
    overrides = command_line_overrides(user_args)  # checked once, up front; passed verbatim to every run
    seeds = parse_list(args.seeds, "seeds", int)
    methods = parse_list(args.methods, "methods")
    baselines = parse_list(args.baselines, "baselines") if args.baselines.strip("[] ") else []
    baseline_epochs = parse_budgets(args.baseline_epochs, baselines)
    lambdas = parse_lambdas(args.sweep_lambda, "--sweep_lambda") if args.sweep_lambda else []
    noise_levels = sorted(parse_list(args.noise_sweep, "noise_sweep", float)) if args.noise_sweep else []
    if any(not sigma >= 0 for sigma in noise_levels):
        raise AlignError(f"--noise_sweep takes noise stds >= 0, e.g. \"[0,0.5,1]\"; got {args.noise_sweep!r}.")
    if noise_levels and not lambdas:
        raise AlignError("--noise_sweep runs Exp-RSFT at every λ of --sweep_lambda at each noise level: give --sweep_lambda.")
    if any(m not in METHODS and m not in all_rows() for m in methods):
        raise AlignError(f"--methods must be among {list(METHODS)} or rows {list(all_rows())}; got {methods}.")
    if args.epochs < 1:
        raise AlignError(f"--epochs must be a positive integer; got {args.epochs}.")
    methods = ["BC", *(m for m in methods if m != "BC")]  # every method starts from its seed's BC
    fixed = {"seed", "backbone", "reward_head", "pretrained_checkpoint", "results_file", "checkpoint_file",
             "stopping_step", "valid_cases"}
    if lambdas:
        fixed.add("reward_lambda")
    if noise_levels:
        fixed.add("reward_noise_std")
    if args.tune and args.tuned_from:
        raise AlignError("--tune tunes here and --tuned_from takes another benchmark's choice: give one of them.")
    given_choice = None
    if args.tuned_from:
        rows = [label for label, _, _ in method_rows(methods)]
        given_choice = {label: settings for label, settings in chosen_in(args.tuned_from).items() if label in rows}
    if args.tune or given_choice:
        fixed |= {key for label, _, _ in method_rows(methods) for key in grid(label)[0]}
    if fixed & set(overrides):
        raise AlignError(f"the benchmark sets {sorted(fixed & set(overrides))} itself (use --seeds, --backbone ...).")
    config_files = [Path(f).resolve() for f in args.config_files.split()] if args.config_files else []
    output_dir = Path(args.output_dir or f"benchmark/{args.dataset}-{args.backbone}").resolve()
    for folder in ("runs", "checkpoints"):
        (output_dir / folder).mkdir(parents=True, exist_ok=True)
    configured = configured_value("data_path", config_files)  # relative to here, but the runs start in output_dir
    data_path = args.data_path or (configured if configured and not Path(configured).is_absolute() else None)
    if data_path:
        user_args = [*user_args, f"--data_path={Path(data_path).resolve()}"]
        overrides["data_path"] = str(Path(data_path).resolve())
    command = " ".join(["python -m recbole_align.benchmark", *args.command_line])
    given = None
    if args.pretrained_checkpoint:
        if args.bc_epochs is not None:
            raise AlignError("--bc_epochs sets the budget of BC's training; with --pretrained_checkpoint none is trained.")
        given = given_bc(args.pretrained_checkpoint, [*methods, *(["ExpRSFT"] if lambdas else [])])

    with folder_lock(output_dir):  # held while this invocation runs and writes its outputs
        start, tuning, chosen = time(), None, given_choice
        if args.tune:
            trials = tuning_plan(seeds[0], methods, args.backbone, args.bc_epochs, args.epochs, given)
            execute_all(trials, baselines, args.dataset, output_dir, config_files, user_args, "tuning ", args.jobs,
                        args.reuse_older_runs)
            chosen = tuning_choice(trials)
            tuning = (trials, chosen)
        runs = plan(seeds, methods, baselines, lambdas, args.backbone, args.bc_epochs, args.epochs, baseline_epochs, chosen,
                    given, noise_levels)
        execute_all(runs, baselines, args.dataset, output_dir, config_files, user_args, jobs=args.jobs,
                    reuse_older=args.reuse_older_runs)  # tuning's: reused
        labels = ["BC", *(label for label, _, _ in method_rows(methods)), *baselines]
        return write_outputs(runs, args, labels, lambdas, output_dir, overrides, command, time() - start, tuning,
                             noise_levels, given_choice)


@exit_on_error
def main(argv=None):
    parser = argparse.ArgumentParser(prog="recbole-align benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--dataset", "-d", default="ml-100k")
    parser.add_argument("--data_path", default=None, help="folder holding <dataset>/<dataset>.inter")
    parser.add_argument("--seeds", default="[2020]", help='e.g. "[2020,2021,2022]"')
    parser.add_argument("--methods", default=f"[{','.join(METHODS)}]", help="BC and post-training methods")
    parser.add_argument("--baselines", default=f"[{','.join(BASELINES)}]", help='RecBole models; "[]" for none')
    parser.add_argument("--baseline_epochs", default="300",
                        help='epoch budget of the baselines: N, or per model "SASRec:5,300" (RecBole\'s 300 by default; '
                             "early stopping after stopping_step, RecBole's 10, epochs without improvement)")
    parser.add_argument("--backbone", default="HSTU", help="HSTU or a RecBole sequential model (SASRec, GRU4Rec)")
    parser.add_argument("--bc_epochs", type=int, default=None,
                        help="BC trained exactly this many epochs (default: to its plateau, see BC_PLATEAU)")
    parser.add_argument("--epochs", type=int, default=30, help="post-training epochs, a fixed budget (the paper's 30)")
    parser.add_argument("--tune", action="store_true",
                        help="first tune every method on the first seed (8 trials a row), then run all seeds at the choice")
    parser.add_argument("--tuned_from", default=None,
                        help="another benchmark's tuning.csv: every row runs at the choice made there (no tuning here), "
                             "e.g. one dataset's choices on another")
    parser.add_argument("--sweep_lambda", default=None, help='Exp-RSFT λ values for Figure 3, e.g. "[0.25,0.5,1,2]"')
    parser.add_argument("--noise_sweep", default=None,
                        help='noise stds σ, e.g. "[0,0.5,1,2]": Exp-RSFT at every --sweep_lambda λ, RSFT and DRPO at each σ, '
                             "trained on ratings + N(0, σ²) (reward_noise_std)")
    parser.add_argument("--pretrained_checkpoint", default=None,
                        help="a BC checkpoint every method starts from, instead of training BC per seed")
    parser.add_argument("--reuse_older_runs", action="store_true",
                        help="reuse finished runs recorded before runs recorded their identity (settings, package defaults "
                             "and code unchecked; their data and start checkpoint checked where recorded), marked in the "
                             "tables; without it they are trained again")
    parser.add_argument("--trace", action="store_true",
                        help="add every post-training run's per-epoch table (valid metric and trainer statistics)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files for every run")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (each its own process; BC runs first, then the methods from them)")
    parser.add_argument("--output_dir", default=None, help="default: benchmark/<dataset>-<backbone>")
    args, _ = parse_command_line(parser, argv)
    print(run_benchmark(args, args.override_args))


if __name__ == "__main__":
    main()
