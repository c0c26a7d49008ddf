"""The λ sweep (the Exp-RSFT paper's Figure 3): the benchmark (:mod:`recbole_align.benchmark`) with
BC and one Exp-RSFT row per λ, all from one BC checkpoint per seed, and no baselines.

    recbole-align sweep --dataset=ml-1m-half --data_path=../shared/data --sweep_lambda="[0.1,0.25,0.5,1,2,5]"

Every benchmark option works (``--seeds``, ``--epochs``, ``--pretrained_checkpoint``, ``--output_dir``,
``--trace`` ...); the defaults here are ``--methods=[BC] --baselines=[]`` and the λ grid above.
Writes the benchmark's outputs: ``lambda_sweep.png``, the sweep's tables in ``table.md``, ``runs.csv``.
"""

import sys

from recbole_align import benchmark

DEFAULTS = ("--methods=[BC]", "--baselines=[]", "--sweep_lambda=[0.1,0.25,0.5,1,2,5]")


def main(argv=None):
    """``recbole-align sweep``: the benchmark with DEFAULTS, which the given options override."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return benchmark.main([*DEFAULTS, *argv])


if __name__ == "__main__":
    main()
