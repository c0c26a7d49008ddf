"""Atomic files as spreadsheet and text tools save them, made into what RecBole 1.2.1's reader takes.

RecBole reads the header line itself (``name:type`` fields split on ``field_separator``, the line's last
character dropped as its newline) and the rest with pandas. A UTF-8 byte-order mark, Windows line ends
(``\\r\\n``), quoted header fields or separators and spaces at line ends break that header (``KeyError:
'user_id'``, ``Type float\\r ... is not supported``) or add an empty column; :func:`readable_atomic_file`
gives RecBole a mended copy of such a file. A header field without a type cannot be mended (the type
is RecBole's format): it is refused in one line naming the file and what to write.
"""

import contextlib
import re
import tempfile
from pathlib import Path

from recbole.utils import FeatureType

from recbole_align.errors import AlignError

TYPES = [t.value for t in FeatureType]


def mended_text(path, separator, encoding):
    """The text of atomic file ``path`` as RecBole's reader needs it, or None when it needs nothing."""
    raw = Path(path).read_bytes()
    encoding = encoding or "utf-8"  # RecBole's default: ~, which open() takes as the locale's (UTF-8 here)
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as error:
        raise AlignError(
            f"Atomic file [{path}] is not {encoding} text (byte {raw[error.start]:#04x} at offset {error.start}): "
            f"save it as UTF-8, or set the config key encoding to its encoding (e.g. latin-1)."
        ) from None
    header, newline, body = text.partition("\n")
    fields = [field.strip().strip('"').strip("'").strip() for field in header.rstrip("\r").rstrip(separator + " ").split(separator)]
    for field in fields:
        name, colon, kind = field.partition(":")
        if not colon or not name or kind not in TYPES:
            raise AlignError(
                f"Atomic file [{path}]: header field [{field}] is not name:type; RecBole's atomic files type every "
                f"column as one of {', '.join(TYPES)}, e.g. user_id:token, rating:float."
            )
    mended_header = separator.join(fields)
    trailing = re.compile(f"[{re.escape(separator)} ]+$", re.M)
    if not (raw.startswith(b"\xef\xbb\xbf") or "\r" in text or mended_header != header or trailing.search(body)):
        return None
    body = trailing.sub("", body.replace("\r\n", "\n").replace("\r", "\n"))
    return mended_header + newline + body


@contextlib.contextmanager
def readable_atomic_file(path, separator, encoding):
    """``path`` itself, or a mended copy of it (:func:`mended_text`) in a temporary folder while in use."""
    text = mended_text(path, separator, encoding)
    if text is None:
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / Path(path).name
        copy.write_text(text, encoding=encoding or "utf-8")
        yield str(copy)
