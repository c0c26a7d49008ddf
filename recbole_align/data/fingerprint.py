"""What a trained model was learned from, recorded in its results JSON and checked before it is reused:
the atomic files of its dataset (size and content hash) and the recbole-align version."""

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


def run_inputs(config):
    """{"data": {atomic file: fingerprint}, "recbole_align": version} of a run's ``config``: every atomic
    file of ``<data_path>/<dataset>/`` named ``<dataset>.*`` (benchmark splits included)."""
    folder = Path(config["data_path"])
    files = sorted(p for p in folder.glob(f"{config['dataset']}.*") if p.suffix in ATOMIC_SUFFIXES)
    return {"data": {str(p.resolve()): file_fingerprint(p) for p in files}, "recbole_align": package_version()}


def input_changes(recorded):
    """What changed since ``recorded`` (a results JSON's ``inputs``) was written: one phrase per changed
    file or version, none if nothing did."""
    changes = [f"{Path(path).name} ({was} -> {now})" for path, was in recorded["data"].items()
               if (now := file_fingerprint(path)) != was]
    if recorded["recbole_align"] != package_version():
        changes.append(f"recbole-align {recorded['recbole_align']} -> {package_version()}")
    return changes


def stale_inputs(results_file):
    """Why the model of ``results_file`` (a finished run's JSON) must not be reused: its data files or the
    recbole-align version changed since (:func:`input_changes`), or it has no record of them; none if it may."""
    results_file = Path(results_file)
    recorded = json.loads(results_file.read_text()).get("inputs") if results_file.is_file() else None
    if recorded is None:
        return [f"no record of the data it was trained on ({results_file.name})"]
    return [f"changed since: {change}" for change in input_changes(recorded)]
