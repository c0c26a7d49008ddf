"""Output files written whole or not at all: each is written to a temporary file in its own folder and renamed
into place, so a reader (or a later run) never finds a partial file under the final name. A failed write
removes its temporary file; an OSError (disk full, permission) becomes one line naming the path."""

import contextlib
import json
import os
from pathlib import Path

from recbole_align.errors import AlignError


@contextlib.contextmanager
def written_atomically(path):
    """A temporary path beside ``path`` (``.<name>.<pid>.tmp``) for the block to write; renamed onto ``path``
    when the block succeeds, removed when it fails. An OSError is raised as an AlignError naming ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise AlignError(f"cannot write [{path}]: {error.strerror or error}") from None
        raise


@contextlib.contextmanager
def opened_atomically(path, mode="wb"):
    """:func:`written_atomically` as an open file, closed before the rename. For writers that take a file:
    given one, ``torch.save`` and ``np.savez`` fail with Python's OSError, not an error of their own."""
    with written_atomically(path) as temporary, open(temporary, mode) as file:
        yield file


def write_text(path, text):
    """``text`` as the file ``path``, atomically."""
    with opened_atomically(path, "w") as file:
        file.write(text)


def write_json(path, value):
    """``value`` as indented JSON in the file ``path``, atomically."""
    write_text(path, json.dumps(value, indent=2))
