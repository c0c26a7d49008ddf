"""Datasets by name, as RecBole gets them: a dataset that is not on disk and is in RecBole's URL table
(``recbole/properties/dataset/url.yaml``: ml-1m, ml-20m, amazon-books, netflix and more), or at
``dataset_url``, is downloaded, extracted and renamed by RecBole's own functions (``recbole.utils.url``)
into ``<data_path>/<dataset>/`` the first time a run asks for it.

What recbole-align adds around them: one process downloads while the others wait (a lock beside the
folder; RecBole's own ``_download`` calls a process-group barrier that a one-process run does not have),
the files are extracted into a temporary folder renamed into place only when complete (nothing half
extracted is ever taken for the dataset), RecBole's question before a download over 1 GB stays for a
person at a terminal while a run without one needs ``confirm_download: True``, and every failure
(offline, a bad URL, a truncated zip) is one line that names the URL and where to put the files by hand.
"""

import contextlib
import fcntl
import os
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from importlib import resources
from logging import getLogger
from pathlib import Path

import yaml
from recbole.utils.url import GBFACTOR, decide_download, download_url, extract_zip, rename_atomic_files

from recbole_align.errors import AlignError


def recbole_url(dataset):
    """The URL of ``dataset`` in RecBole's table of downloadable datasets, or None."""
    table = resources.files("recbole") / "properties" / "dataset" / "url.yaml"
    return yaml.safe_load(table.read_text()).get(dataset)


def dataset_url(config):
    """Where the dataset of ``config`` is downloaded from: ``dataset_url``, else RecBole's table (None: nowhere)."""
    return config["dataset_url"] or recbole_url(config["dataset"])


@contextlib.contextmanager
def download_lock(folder):
    """Hold ``.<dataset>.download.lock`` beside the dataset's ``folder`` for the block: one process downloads, the
    others wait for it (the system releases the lock when a process ends)."""
    lock_file = folder.parent / f".{folder.name}.download.lock"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_file, "a")
    except OSError as error:
        raise AlignError(f"cannot write [{lock_file}] to download dataset [{folder.name}]: {error.strerror}.") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download_size_gb(url):
    """The size of the file at ``url`` in GB (its Content-Length in the answer to a HEAD request; 0 when the
    server does not say)."""
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as answer:
        return int(answer.info()["Content-Length"] or 0) / GBFACTOR


def confirmed(url, confirm):
    """Whether to download ``url``: ``confirm`` (confirm_download) says yes; at a terminal, RecBole's question
    for a file over 1 GB; without one, a file over 1 GB needs ``confirm``."""
    if confirm:
        return True
    if sys.stdin is not None and sys.stdin.isatty():
        return decide_download(url)
    size = download_size_gb(url)
    if size > 1:
        raise AlignError(f"dataset download from [{url}] is {size:.2f} GB and no one is at a terminal to confirm it: "
                         f"run with --confirm_download=True to download it.")
    return True


def ensure_dataset(config):
    """Download the dataset of ``config`` into ``<data_path>/<dataset>/`` when its ``.inter`` file is missing
    and a URL is known (see the module docstring); nothing when it is on disk or no URL is known."""
    folder, name = Path(config["data_path"]), config["dataset"]
    if (folder / f"{name}.inter").is_file() or not (url := dataset_url(config)):
        return
    with download_lock(folder):
        if (folder / f"{name}.inter").is_file():  # another process downloaded it while this one waited
            return
        download(url, folder, name, config["confirm_download"])


def download(url, folder, name, confirm=False):
    """RecBole's download of ``url`` (a zip of atomic files) into ``folder`` as dataset ``name``: into a
    temporary folder beside it, renamed into place when complete; any failure removes that folder and is
    one AlignError naming the URL and what to put where by hand."""
    hand = (f"download it by hand and put its atomic files in [{folder}] as {name}.inter (and {name}.user, "
            f"{name}.item when it has them)")
    partial = folder.parent / f".{folder.name}.download-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if not confirmed(url, confirm):
            raise AlignError(f"download of dataset [{name}] from [{url}] declined: {hand}.")
        getLogger().info(f"dataset [{name}] is not in [{folder}]: downloading it from [{url}] (RecBole's downloader)")
        path = download_url(url, str(partial))
        extract_zip(path, str(partial))
        os.unlink(path)
        rename_atomic_files(str(partial), Path(path).stem, name)
        if not (partial / f"{name}.inter").is_file():
            raise AlignError(f"the zip at [{url}] holds no [{name}.inter] once renamed as RecBole renames it "
                             f"({sorted(p.name for p in partial.iterdir())}): {hand}.")
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # an empty folder left by hand
        partial.rename(folder)
    except (OSError, RuntimeError, zipfile.BadZipFile, urllib.error.URLError, ValueError, TypeError) as error:
        cause = getattr(error, "reason", None) or error
        raise AlignError(f"cannot download dataset [{name}] from [{url}] ({type(error).__name__}: {cause}): {hand}.") \
            from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    getLogger().info(f"dataset [{name}] downloaded into [{folder}]")
