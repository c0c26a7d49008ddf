"""What a trained model was learned from, recorded in its results JSON (and its last-epoch state) and
checked before it is reused or resumed: the atomic files of its dataset (size and content hash), the
checkpoint it started from, and the recbole-align version."""

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


def run_inputs(config):
    """{"data": {atomic file: fingerprint}, "recbole_align": version} of a run's ``config``: every atomic
    file of ``<data_path>/<dataset>/`` named ``<dataset>.*`` (benchmark splits included); a run that starts
    from ``pretrained_checkpoint`` adds {"pretrained_checkpoint": {its path: fingerprint}}."""
    folder = Path(config["data_path"])
    files = sorted(p for p in folder.glob(f"{config['dataset']}.*") if p.suffix in ATOMIC_SUFFIXES)
    inputs = {"data": {str(p.resolve()): file_fingerprint(p) for p in files}, "recbole_align": package_version()}
    if config["pretrained_checkpoint"]:
        start = Path(config["pretrained_checkpoint"]).resolve()
        inputs["pretrained_checkpoint"] = {str(start): path_fingerprint(start)}
    return inputs


def input_changes(recorded):
    """What changed since ``recorded`` (a results JSON's ``inputs``) was written: one phrase per changed
    file or version, none if nothing did."""
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
