"""Bad input in real datasets: find it before training, then stop or skip (``data.on_bad_sample``).

What counts as bad: a missing, empty, unreadable or truncated image file, a file that is not an image,
an image of more than ``data.max_pixels`` pixels, an image path that leaves its folder, an id of the
wrong type or given twice, a caption for an unknown image id, an empty caption, a record without an
expected key.

Image paths in annotation files (``file_name``, ``image``, ``filename`` / ``filepath``) are relative to
a folder the config names (``data.root``, ``data.image_root``, ``data.image_dir``). ``image_path``
refuses a path that is not a string, is absolute, or has a ``..`` component (any: ``link/../x``
stays inside on paper but leaves the folder when ``link`` is a symlink): an annotation file must
not make a run read (and train on, and cache) any file its user can read. Symlinks inside
the folder are followed: whoever set up the folder made them (``train2014 -> /mnt/big/coco/train2014``
is a common layout), not the annotation file. Ids (``image_id``, ``id``, ``question_id``) must be
integers or strings; ``UnknownIds`` says when an id is unknown only because one file writes it as a
string and the other as an integer.

- ``on_bad_sample=error`` (default): ``BadRecords.resolve`` raises one ``MMFuseError`` that names the
  source file, lists the first offending records and counts the rest, and says how to fix it;
- ``on_bad_sample=skip``: the records are left out, a warning says how many and which, and
  ``summary()`` (how many per reason, the first ones) goes into ``results.json`` through ``describe()``.

Image checks (``data.verify_images``): ``quick`` reads the header and last bytes of every file (known
image signature, then width x height (x frames, GIF) from the header within ``data.max_pixels``, not
scanned for a file of unknown signature (``mmfuse.data.image_size``: a header without a size is
refused at decoding); JPEG end-of-image marker / PNG ``IEND`` chunk, which a partly written file
lacks; a suspect file is then decoded to confirm), ``decode``
decodes every file, ``none`` only checks that the files exist (the pixel limit is then met at
decoding: ``mmfuse.data.images``). A file that still fails to decode during training is dropped from its batch with a
warning and counted (``mmfuse.data.images``): training never stops mid-epoch on a bad image.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mmfuse.data.image_size import DEFAULT_MAX_PIXELS, header_size, sniff, too_many_pixels
from mmfuse.errors import MMFuseError

log = logging.getLogger(__name__)

POLICIES = ("error", "skip")
VERIFY_MODES = ("quick", "decode", "none")
SHOW = 5  # offending records listed in messages
TAIL_BYTES = 2048


def check_policy(on_bad_sample: str, verify_images: str = "quick") -> None:
    if on_bad_sample not in POLICIES:
        raise MMFuseError(f"data.on_bad_sample={on_bad_sample!r}: expected one of {POLICIES}")
    if verify_images not in VERIFY_MODES:
        raise MMFuseError(f"data.verify_images={verify_images!r}: expected one of {VERIFY_MODES}")


def decode_error(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """None if torchvision decodes ``path``, else why not (whole: the path, which the record names,
    taken off the front of an ``MMFuseError``)."""
    from mmfuse.data.images import decode_file

    try:
        decode_file(path, max_pixels)
    except Exception as e:  # torchvision raises RuntimeError with the decoder's message
        last = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        return f"cannot be decoded ({last.removeprefix(f'{path}: ')})"
    return None


def check_image_file(path: str | Path, mode: str = "quick", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Why ``path`` is not a usable image (see the module docstring for ``mode``), or None if it is."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a file"
        if mode == "none":
            return None
        if size == 0:
            return "empty image file"
        with open(path, "rb") as f:
            kind = sniff(f.read(16))
            if kind is None:
                return "not an image (unknown file signature; expected JPEG, PNG, GIF or WebP)"
            image_size = header_size(f)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return "missing image file"
    except OSError as e:
        return f"unreadable image file ({e.strerror or type(e).__name__})"
    if image_size is not None and (reason := too_many_pixels(image_size, max_pixels)):
        return reason  # before any decoding
    suspect = (kind == "jpeg" and b"\xff\xd9" not in tail) or (kind == "png" and b"IEND" not in tail)
    if suspect or mode == "decode":  # (a header without a size is refused undecoded there)
        reason = decode_error(path, max_pixels)
        if reason and suspect:
            return f"truncated {kind.upper()} file ({reason})"
        return reason
    return None


def check_images(paths: Sequence[Path], mode: str = "quick", workers: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[int, str]:
    """``{index: reason}`` for every unusable file among ``paths`` (in parallel threads)."""
    if not paths:
        return {}
    workers = workers or min(16, (os.cpu_count() or 1) * 4)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(lambda p: check_image_file(p, mode, max_pixels), paths, chunksize=64))
    return {i: r for i, r in enumerate(reasons) if r is not None}


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def json_type(value: Any) -> str:
    """What ``value`` is, in JSON's words ("an integer", "a list"), for messages about records."""
    return _JSON_TYPES.get(type(value), f"a {type(value).__name__}")


def image_path(folder: Path, *parts: Any) -> Path | str:
    """``folder / parts...`` for an image path read from an annotation file, or why it is refused
    (not a string, absolute, or with a ``..`` component; see the module docstring)."""
    for part in parts:
        if not isinstance(part, str):
            return f"image path not a string ({part!r} is {json_type(part)})"
        if "\0" in part:
            return f"image path with a NUL byte ({part!r})"
        if PurePosixPath(part).is_absolute() or ".." in PurePosixPath(part).parts:
            why = "is absolute" if part.startswith("/") else "has a '..' component"
            return f"image path outside the image folder ({part!r} {why}; paths are relative to {folder})"
    return folder.joinpath(*parts)


def id_problem(value: Any, what: str) -> str | None:
    """Why ``value`` cannot be an id (``what``: "image id", ...): ids are integers or strings."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    return f"{what} not an integer or a string ({value!r} is {json_type(value)})"


class UnknownIds:
    """Reasons for references to ids that ``known`` lacks: ``otherwise``, or, when the id is unknown
    only because the two files write it as a string and as an integer ("5" vs 5), a reason that says so."""

    def __init__(self, known: Mapping[Any, Any], owners: str) -> None:
        self.known = known
        self.owners = owners  # who holds the ids, for the message: "the images", "the annotations"
        self._as_text: dict[str, Any] | None = None

    def reason(self, value: Any, otherwise: str) -> str:
        if self._as_text is None:
            self._as_text = {str(k): k for k in self.known}
        twin = self._as_text.get(str(value))
        if twin is None or type(twin) is type(value):
            return otherwise
        return (f"id type mismatch ({value!r} is {json_type(value)}, {self.owners} have {json_type(twin)} "
                f"{twin!r}; Fix: write the ids the same way in both files)")


def read_json(path: str | Path, what: str) -> Any:
    """The parsed JSON file ``path``; a missing or malformed file is an ``MMFuseError`` naming it."""
    import json

    path = Path(path)
    if not path.is_file():
        raise MMFuseError(f"{path} not found ({what}). Fix: check data.root and the file names "
                          "(README: Real data and pretrained encoders).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise MMFuseError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                          f"expected {what}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MMFuseError(f"{path}: cannot be read ({type(e).__name__}: {e}).") from None


def require_keys(obj: Any, keys: Iterable[str], source: str | Path, what: str) -> None:
    """``obj`` must be a mapping with ``keys`` (the top level of an annotation file)."""
    keys = list(keys)
    if not isinstance(obj, Mapping):
        raise MMFuseError(f"{source}: expected a JSON object with the keys {keys} ({what}), found a "
                          f"{type(obj).__name__}. Fix: point the data config at the right file.")
    missing = [k for k in keys if k not in obj]
    if missing:
        found = sorted(obj)[:10]
        raise MMFuseError(f"{source}: missing the key(s) {missing} ({what}); its keys are {found}. "
                          "Fix: point the data config at the right file.")


@dataclass(frozen=True)
class BadRecord:
    reason: str
    record: str  # which record: "image id 42 (val2017/000000000042.jpg)", "line 7", ...


class BadRecords:
    """Collects the bad records of one split and applies the ``on_bad_sample`` policy."""

    def __init__(self, dataset: str, split: str, sources: Sequence[str | Path]) -> None:
        self.dataset = dataset
        self.split = split
        self.sources = [str(s) for s in sources]
        self.records: list[BadRecord] = []

    def add(self, reason: str, record: str) -> None:
        self.records.append(BadRecord(reason, record))

    def __len__(self) -> int:
        return len(self.records)

    def lines(self, n: int = SHOW) -> list[str]:
        return [f"{r.record}: {r.reason}" for r in self.records[:n]]

    def resolve(self, on_bad_sample: str) -> None:
        """Raise (``error``) or warn (``skip``) when there are bad records; nothing when there are none."""
        if not self.records:
            return
        n = len(self.records)
        where = " and ".join(self.sources)
        listing = "\n  ".join(self.lines())
        more = f"\n  ... and {n - SHOW} more" if n > SHOW else ""
        if on_bad_sample == "error":
            raise MMFuseError(
                f"data={self.dataset}, {self.split} split: {n} bad record(s) in {where}:\n  {listing}{more}\n"
                "Fix: repair or remove them, or set data.on_bad_sample=skip to leave them out (their count "
                "goes into results.json)."
            )
        log.warning("data=%s, %s split: skipping %d bad record(s) from %s:\n  %s%s", self.dataset,
                    self.split, n, where, listing, more)

    def summary(self) -> dict[str, Any]:
        """For ``results.json``: the count, the count per reason, and the first records."""
        by_reason = Counter(r.reason.split(" (")[0] for r in self.records)
        return {"count": len(self.records), "by_reason": dict(by_reason), "first": self.lines()}
