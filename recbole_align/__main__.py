"""The ``recbole-align`` command (also ``python -m recbole_align``; ``run_recbole_align.py`` is its run).

    recbole-align --model=HSTU --dataset=ml-100k [--config_files="a.yaml b.yaml"] [--key=value ...]
    recbole-align benchmark | diagnostics | hyper | recommend | export [options]   (--help for each)
"""

import importlib
import sys

SUBCOMMANDS = ("benchmark", "diagnostics", "hyper", "recommend", "export")


def main(argv=None):
    """A subcommand's ``main`` (its module ``recbole_align.<name>``), else a run as ``run_recbole_align.py``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(f"recbole_align.{argv[0]}").main(argv[1:])
    return importlib.import_module("recbole_align.quick_start").main(argv)


if __name__ == "__main__":
    main()
