"""Which code produced a result: the results version, part of every run's identity (recbole_align.identity).

The rule, for a developer who changes the code of RESULT_SOURCES (what a run computes its results
with): ``tests/test_identity.py`` holds :func:`source_digest` against SOURCE_DIGEST and fails on any
change of that code (docstrings, comments and layout aside). Then either

* the change may move a result: bump RESULTS_VERSION and set SOURCE_DIGEST to the new digest; every
  finished run is trained again when it is next asked for; or
* it moves none (a refactoring, a new option off by default): set SOURCE_DIGEST alone, and say why in
  the commit; finished runs stay reusable.

A checkout whose sources differ from SOURCE_DIGEST (a researcher's own edit, not yet declared) runs as
code ``<version>+<digest>``: its runs are reused only by the very same code.
"""

import ast
import functools
import hashlib
from pathlib import Path

RESULTS_VERSION = 1
SOURCE_DIGEST = "c45558e8904f399b"

# the packages and modules (relative to recbole_align/) whose code a run's results come from
RESULT_SOURCES = ("model", "trainer", "evaluator", "data", "compat.py", "diagnostics.py", "quick_start.py")
PACKAGE = Path(__file__).resolve().parent


def without_docstrings(tree):
    """``tree`` (a module's AST) with the docstring of the module and of each class and function removed."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def source_digest(package=PACKAGE):
    """16 hex digits of the code of RESULT_SOURCES in ``package`` (the folder of recbole_align): the AST of
    each module (so comments, docstrings and line breaks do not count), in path order; "unavailable"
    where the sources are not installed."""
    files = sorted(p for name in RESULT_SOURCES
                   for p in ((package / name).rglob("*.py") if (package / name).is_dir() else [package / name]))
    digest = hashlib.sha1()
    try:
        for path in files:
            tree = without_docstrings(ast.parse(path.read_text(encoding="utf-8")))
            digest.update(f"{path.relative_to(package).as_posix()}\n{ast.dump(tree)}\n".encode())
    except OSError:
        return "unavailable"
    return digest.hexdigest()[:16]


def code_version():
    """The code part of a run's identity: ``v<RESULTS_VERSION>`` for the declared sources, else
    ``v<RESULTS_VERSION>+<source digest>`` (undeclared changes)."""
    digest = source_digest()
    return f"v{RESULTS_VERSION}" if digest == SOURCE_DIGEST else f"v{RESULTS_VERSION}+{digest}"
