"""Read an offline W&B run (``offline-run-*/run-<id>.wandb``) back, without W&B's servers.

The file is W&B's record log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version), then 32 KiB blocks
of records, each ``crc32 (4) | length (2, LE) | type (1) | data``, a record split over blocks as
FIRST / MIDDLE / LAST chunks; every complete record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + HEADER])
        chunk = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """``{"run": {project, group, job_type, tags, name}, "config": {...}, "history": [{...}],
    "summary": {...}, "exit_code": int | None}`` of one offline run directory."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    out: dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "exit_code": None}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"project": r.project, "group": r.run_group, "job_type": r.job_type,
                          "tags": list(r.tags), "name": r.display_name, "id": r.run_id}
            for item in r.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({(i.key or ".".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                out["summary"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out
