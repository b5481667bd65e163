"""The ``cache`` config group (``conf/cache/{auto,off,rebuild}.yaml``), checked into a dataclass.

- ``mode``: ``auto`` (use the cached features of frozen encoders, build them when missing),
  ``off`` (always run the encoders), ``rebuild`` (recompute entries made before this process started,
  then use them; the other jobs of the same sweep reuse the rebuilt entries);
- ``dir``: where entries live (default ``${paths.cache_dir}/features``);
- ``dtype``: ``float32`` (default: bit-for-bit the encoder's output, so metrics are identical with and
  without the cache) or ``float16`` (half the disk and page cache; values are rounded to 11 bits,
  which moves metrics slightly: on shapes with frozen tiny encoders val/acc 0.5233 -> 0.5217);
- ``tokens``: ``auto`` (store token sequences only when the fusion reads them) or ``true`` (always);
- ``verify``: ``checksum`` (sha256 of every file before use) or ``size`` (sizes only: for entries of
  many GB, where hashing would take seconds per run);
- ``batch_size`` / ``num_workers``: for encoding (``num_workers: null`` = ``data.num_workers``);
- ``decode``: ``auto`` (JPEGs decoded on the GPU when encoding on one and the store gives the file
  bytes) or ``cpu``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmfuse.errors import MMFuseError

MODES = ("auto", "off", "rebuild")


@dataclass(frozen=True)
class CacheSettings:
    mode: str = "auto"
    dir: str = "outputs/cache/features"
    dtype: str = "float32"
    tokens: str = "auto"
    verify: str = "checksum"
    batch_size: int = 256
    num_workers: int | None = None
    decode: str = "auto"

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value is False and "off" in allowed:  # YAML 1.1 reads a bare off as false
        value = "off"
    if value is True and "true" in allowed:
        value = "true"
    if not isinstance(value, str) or value not in allowed:
        raise MMFuseError(f"cache.{key}={value!r}: expected one of {list(allowed)}, e.g. cache.{key}={allowed[0]}")
    return value


def cache_settings(node: DictConfig | dict | str | None) -> CacheSettings:
    """Settings from the ``cache`` config node (a bare ``cache: off`` string is accepted too)."""
    if node is None:
        return CacheSettings(mode="off")
    if isinstance(node, (str, bool)):
        return CacheSettings(mode=_choice("mode", node, MODES))
    raw = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    known = {f.name for f in fields(CacheSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise MMFuseError(f"cache has unknown keys {unknown}; known: {sorted(known)} (conf/cache/auto.yaml)")
    s = CacheSettings(**raw)
    _choice("mode", s.mode, MODES)
    _choice("dtype", s.dtype, ("float16", "float32"))
    _choice("tokens", str(s.tokens).lower() if isinstance(s.tokens, bool) else s.tokens, ("auto", "true"))
    _choice("verify", s.verify, ("checksum", "size"))
    _choice("decode", s.decode, ("auto", "cpu"))
    for key in ("batch_size", "num_workers"):
        v = getattr(s, key)
        if v is None and key == "num_workers":
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key == "batch_size" else 0):
            raise MMFuseError(f"cache.{key}={v!r}: expected an integer >= {1 if key == 'batch_size' else 0}")
    mode = "off" if s.mode is False else s.mode
    tokens = "true" if s.tokens is True or s.tokens == "true" else "auto"
    return CacheSettings(**{**raw, "mode": mode, "tokens": tokens})
