"""Fingerprints of the files a run learns from (its dataset's atomic files, the checkpoint it starts
from), for its identity (recbole_align.identity); and the check of the ``inputs`` that results JSONs
recorded before runs recorded their identity (2026-12-05 to 2026-12-06), for ``--reuse_older_runs``."""

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ATOMIC_SUFFIXES = {".inter", ".user", ".item", ".kg", ".link", ".net"}  # RecBole's atomic file types


def package_version():
    try:
        return version("recbole-align")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


def file_fingerprint(path):
    """'<size>:<sha1 of the content, 16 hex digits>', or 'missing'."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.stat().st_size}:{digest.hexdigest()[:16]}"


def path_fingerprint(path):
    """:func:`file_fingerprint` of a file; of a folder (an exported model), a hash of its files' fingerprints."""
    path = Path(path)
    if not path.is_dir():
        return file_fingerprint(path)
    files = "\n".join(f"{p.name}={file_fingerprint(p)}" for p in sorted(path.iterdir()) if p.is_file())
    return f"folder:{hashlib.sha1(files.encode()).hexdigest()[:16]}"


def input_changes(recorded):
    """What changed since ``recorded`` (an older results JSON's ``inputs``: {"data": {path: fingerprint},
    "recbole_align": version, "pretrained_checkpoint": {path: fingerprint}}) was written: one phrase per
    changed file or version, none if nothing did."""
    files = {**recorded["data"], **recorded.get("pretrained_checkpoint", {})}
    changes = [f"{Path(path).name} ({was} -> {now})" for path, was in files.items() if (now := path_fingerprint(path)) != was]
    if recorded["recbole_align"] != package_version():
        changes.append(f"recbole-align {recorded['recbole_align']} -> {package_version()}")
    return changes


def stale_inputs(results_file):
    """Why the model of ``results_file`` (a finished run's JSON) must not be reused: its data files, the
    checkpoint it started from or the recbole-align version changed since (:func:`input_changes`), or it
    has no record of them; none if it may."""
    results_file = Path(results_file)
    recorded = json.loads(results_file.read_text()).get("inputs") if results_file.is_file() else None
    if recorded is None:
        return [f"no record of the data it was trained on ({results_file.name})"]
    return [f"changed since: {change}" for change in input_changes(recorded)]
