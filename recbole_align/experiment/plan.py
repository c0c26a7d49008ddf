"""Planning: the runs of a benchmark (:class:`Run`), per seed BC then every row from its checkpoint, the
tuning trials, the λ and reward-noise sweeps; nothing here runs anything."""

from dataclasses import dataclass, field
from pathlib import Path

from recbole_align.config import resolve_model
from recbole_align.errors import AlignError
from recbole_align.experiment.methods import METHODS, all_rows, grid, method_rows
from recbole_align.pretrained import read_pretrained


@dataclass
class Run:
    """One process of run_recbole_align.py: ``label`` is its row in the tables, made from ``model`` and,
    for the sweeps' rows, ``sweep_lambda`` (Exp-RSFT's λ of the λ sweep) and ``noise_std`` (σ of the
    reward-noise sweep), which the tables read (never the label)."""

    label: str
    model: str
    seed: int
    settings: dict  # config overrides set by the benchmark (the user's --key=value come on top)
    results: dict = field(default=None)
    error: str = None
    resumed: bool = False  # continued from the last validated epoch of an interrupted invocation
    older: bool = False  # reused although recorded before runs recorded their identity (--reuse_older_runs)
    results_file: Path = None
    sweep_lambda: float = None
    noise_std: float = 0.0


# beside Exp-RSFT's λ rows at each level of the reward-noise sweep: (label, model, settings); RSFT on
# rescaled ratings, as its raw weights w = r refuse the negative ratings that noise makes
NOISE_METHODS = (("RSFT rescaled", "RSFT", {"rescale_rewards": True}), ("DRPO", "DRPO", {}))


def noise_label(base, sigma):
    """The row of ``base`` (a method or "ExpRSFT λ=...") at noise std ``sigma``: σ = 0 is the plain row."""
    return f"{base} σ={sigma:g}" if sigma else base


def lambda_label(lam):
    """The row of Exp-RSFT at λ = ``lam`` in the λ sweep."""
    return f"ExpRSFT λ={lam:g}"


def noise_rows(lambdas, noise_levels):
    """(label, model, settings, λ of the sweep or None, σ) of the reward-noise sweep: at each σ, Exp-RSFT at
    every λ, RSFT and DRPO trained on ratings with N(0, σ²) noise (``reward_noise_std``); the σ = 0 rows are
    the plain ones."""
    rows = []
    for sigma in noise_levels:
        noise = {"reward_noise_std": sigma} if sigma else {}
        rows += [(noise_label(lambda_label(lam), sigma), "ExpRSFT", {"reward_lambda": lam, **noise}, lam, sigma)
                 for lam in lambdas]
        rows += [(noise_label(label, sigma), m, {**settings, **noise}, None, sigma) for label, m, settings in NOISE_METHODS]
    return rows


def post_settings(backbone, seed, epochs):
    """What every post-training run of a seed gets: a fixed budget of ``epochs`` (early stopping off,
    so that the final epoch is the budget's, as the paper trains 30 epochs)."""
    return {"backbone": backbone, "seed": seed, "epochs": epochs, "stopping_step": epochs}


# BC's plateau rule: up to 200 epochs, stopped after 20 without a better NDCG@10 on ALL the valid cases
# (943 on ml-100k, against 202 rated >= 4.5, on which a patience of 10 stops on noise; BENCHMARKS 10)
BC_PLATEAU = {"epochs": 200, "stopping_step": 20, "valid_cases": "all"}


def bc_run(seed, backbone, bc_epochs, given=None):
    """The BC row of ``seed``: BC trained with the reward head, to its plateau (BC_PLATEAU) or, with
    ``bc_epochs``, for exactly that many epochs (its best epoch on all the valid cases kept); or, with
    ``given`` (a BC checkpoint and a post-training model to evaluate it with), that checkpoint
    evaluated by a 0-epoch run of the model."""
    if given is not None:
        checkpoint, model = given
        return Run("BC", model, seed, {"seed": seed, "pretrained_checkpoint": checkpoint, "epochs": 0})
    budget = BC_PLATEAU if bc_epochs is None else {**BC_PLATEAU, "epochs": bc_epochs, "stopping_step": bc_epochs}
    return Run("BC", "BC", seed, {"backbone": backbone, "reward_head": True, "seed": seed, **budget})


def bc_checkpoint_of(results):
    """The BC checkpoint of a BC row's results: the given one, else the one its run trained."""
    return results.get("pretrained_checkpoint") or results["checkpoint"]


def given_bc(checkpoint, methods):
    """(checkpoint, model) for :func:`bc_run`: the model is the first of ``methods`` that needs a reward
    head when the checkpoint has one (so that BC's row gets its Avg Reward), else the first method."""
    if not Path(checkpoint).is_file():
        raise AlignError(f"--pretrained_checkpoint [{checkpoint}] is not a file.")
    post = [all_rows().get(m, (m, m))[1] for m in methods if m != "BC"]
    if not post:
        raise AlignError("--pretrained_checkpoint needs a post-training method in --methods (or --sweep_lambda).")
    has_head = read_pretrained(checkpoint)["config"]["reward_head"]
    needs_head = [m for m in post if has_head and getattr(resolve_model(m).trainer_class, "requires_reward_head", False)]
    return str(Path(checkpoint).resolve()), (needs_head or post)[0]


def plan(seeds, methods, baselines, lambdas, backbone, bc_epochs, epochs, baseline_epochs, tuned=None, given=None,
         noise_levels=()):
    """The runs of one benchmark, in order: per seed, BC, the methods (with ``tuned``: {label:
    settings} on top), the λ sweep, then the baselines (``baseline_epochs``: {baseline: budget}; RecBole's
    early stopping; ``given``: see :func:`bc_run`), the reward-noise sweep's rows not planned already
    (:func:`noise_rows`). A sweep's row takes the ``tuned`` settings of its method's row (Exp-RSFT's for the
    λ rows), its own λ and σ on top, so that a tuned benchmark sweeps around its choice. A post-training
    run's ``pretrained_checkpoint`` is filled in once its seed's BC has run."""
    tuned = tuned or {}
    row_of = {"ExpRSFT": "ExpRSFT", **{m: label for label, m, _ in NOISE_METHODS}}  # a sweep's model -> its row
    runs = []
    for seed in seeds:
        runs.append(bc_run(seed, backbone, bc_epochs, given))
        post = post_settings(backbone, seed, epochs)
        runs += [Run(label, m, seed, {**post, **settings, **tuned.get(label, {})})
                 for label, m, settings in method_rows(methods)]
        runs += [Run(lambda_label(lam), "ExpRSFT", seed, {**post, **tuned.get("ExpRSFT", {}), "reward_lambda": lam},
                     sweep_lambda=lam) for lam in lambdas]
        planned = {run.label for run in runs if run.seed == seed}
        runs += [Run(label, m, seed, {**post, **tuned.get(row_of[m], {}), **settings}, sweep_lambda=lam,
                     noise_std=sigma)
                 for label, m, settings, lam, sigma in noise_rows(lambdas, noise_levels) if label not in planned]
        runs += [Run(b, b, seed, {"seed": seed, "epochs": baseline_epochs[b]}) for b in baselines]
    return runs


def tuning_plan(seed, methods, backbone, bc_epochs, epochs, given=None):
    """BC of ``seed`` and, for every post-training row, its grid's trials (8, fewer only
    where its trainer refuses a value: methods.grid)."""
    runs = [bc_run(seed, backbone, bc_epochs, given)]
    post = post_settings(backbone, seed, epochs)
    for label, m, settings in method_rows(methods):
        runs += [Run(label, m, seed, {**post, **settings, **trial}) for trial in grid(label)]
    return runs


def kind(run):
    """BC, post-training (methods and the λ sweep) or baseline: runs of one kind cost alike."""
    return "BC" if run.label == "BC" else "post" if run.model in METHODS else "baseline"
