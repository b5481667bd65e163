"""``FeatureCache``: frozen encoders run once per (encoder, preprocessing, split), not once per run.

``FeatureCache(model, settings, encoder_configs).wrap(splits, trainer)`` replaces, in every
``PairDataset`` split, the item store (images, clips or sounds: the dataset's ``modality``, ``image``
unless it says otherwise) and / or the tokenized texts of each *fully frozen* encoder by a
``CachedFeatures`` store; batches then carry ``<modality>_features`` (``image_features``,
``video_features``, ``audio_features``, ``text_features``) and ``FusionModel`` skips that encoder. A
trainable encoder (``freeze=false`` or ``trainable_last > 0``) is never cached, with one exception:
a video encoder whose frame encoder is fully frozen and whose temporal model trains
(``temporal=transformer``) has its frame encoder's outputs cached (side ``video_frames``,
``CachedFrameFeatures``, batches carry ``video_frame_features``) and only the temporal model runs.

Splits that are not a ``PairDataset`` but offer ``feature_sources()`` (``MediaPairDataset``: video /
audio / image files; ``AVDataset``: data=shapes_av) are cached too: each frozen side whose modality has
a source (``mmfuse.data.media.FeatureSource``: ``load(i)``, ``describe()``, ``fingerprint()``) is
encoded from it and its store put into the split's ``cached[modality]``; the text side replaces
``text`` as for a ``PairDataset``. An item that fails to load while encoding is handled as training
handles it (the source marks it failed and warns); its row is listed in the entry's ``failed``
(``{index: reason}``, ``CachedFeatures.failed``) and the dataset drops its pairs from every batch.

Sides (the names in ``report`` and ``results.json``): ``image``, ``video``, ``video_frames``, ``audio``,
``text``. Sounds are encoded longest first, right-padded, with ``audio_mask`` (see ``encode``).

Per side and split the entry key is a hash of exactly what determines the features (see ``keys``):
encoder code, config and weights; the transform or tokenizer; the split's images or token ids; the
numeric regime (device type, trainer precision, float32 matmul precision); whether token sequences
are stored.

Concurrency and faults (see ``storage``): a valid entry is used without locking. Otherwise the key's
file lock is taken (``<dir>/<key>.lock``; the operating system releases it when its holder dies), the
entry checked again (another process may have just built it), leftovers of killed writers deleted,
and the entry encoded, verified and published atomically. Two jobs that need the same entry at the
same time therefore encode it once; the other waits and reads. An entry that fails its check (missing
file, size or sha256 different from the manifest) is rebuilt with a warning.

Encoding runs inside ``torch.random.fork_rng``: building the cache draws no random numbers from the
streams training uses, so a run that builds the cache, one that reads it and one without it see the
same negatives, dropout masks and worker seeds.

``report``: per split and side, the key, the entry path and what happened (``hit``, ``built``,
``rebuilt``), for ``results.json``. The samples each encoder encoded are counted by ``FusionModel``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import filelock
import torch
from torch.utils.data import Dataset

from mmfuse.data.pairs import PairDataset
from mmfuse.features import encode as enc
from mmfuse.features.keys import (
    FORMAT_VERSION,
    as_numpy_dtype,
    code_identity,
    describe_tokenizer,
    describe_transform,
    images_fingerprint,
    key_of,
    texts_fingerprint,
    weights_digest,
    without_keys,
)
from mmfuse.features.settings import CacheSettings
from mmfuse.features.storage import CacheCorrupt, EntryWriter, open_entry, remove_stale
from mmfuse.features.store import CachedFeatures, CachedFrameFeatures
from mmfuse.model import FusionModel

log = logging.getLogger(__name__)

PROCESS_START = time.time()  # cache=rebuild recomputes entries created before this
SIDES = ("image", "video", "video_frames", "audio", "text")
NOT_IN_KEY = ("load_weights",)  # config keys (at any depth) that do not change the features (the weights do)
# encoder.video keys that shape only the temporal model, not the frame encoder's outputs (video_frames side)
TEMPORAL_ONLY = ("temporal", "max_frames", "grid", "layers", "heads", "dropout", "freeze", "trainable_last")


def side_modality(side: str) -> str:
    """The modality whose inputs a side replaces: ``video_frames`` -> ``video``, else the side itself."""
    return "video" if side == "video_frames" else side


def item_modality(dataset: PairDataset) -> str:
    """What a ``PairDataset``'s item store holds: its class's ``modality`` (``image`` when it has none)."""
    return getattr(dataset, "modality", "image")


class FeatureCache:
    def __init__(self, model: FusionModel, settings: CacheSettings,
                 encoder_configs: dict[str, dict[str, Any]] | None = None) -> None:
        self.model = model
        self.settings = settings
        self.root = Path(settings.dir).expanduser()
        configs = {m: without_keys((encoder_configs or {}).get(m, {}), NOT_IN_KEY) for m in SIDES}
        configs["video_frames"] = {k: v for k, v in configs["video"].items() if k not in TEMPORAL_ONLY}
        self.encoder_configs = configs
        self.report: dict[str, dict[str, dict[str, Any]]] = {}
        self._encoder_identity: dict[str, dict[str, Any]] = {}

    # -- which sides -----------------------------------------------------------------------------
    def encoder(self, side: str) -> torch.nn.Module | None:
        """The module a side runs: the modality's encoder, or for ``video_frames`` its frame encoder."""
        encoder = getattr(self.model, f"{side_modality(side)}_encoder", None)
        return getattr(encoder, "frame", None) if side == "video_frames" else encoder

    def cached_sides(self) -> list[str]:
        """The model's fully frozen encoders, and ``video_frames`` for a video encoder that trains only
        over a fully frozen frame encoder."""
        sides = []
        for side in SIDES:
            if side == "video_frames" and getattr(self.encoder("video"), "fully_frozen", True):
                continue  # a fully frozen video encoder is cached whole
            if getattr(self.encoder(side), "fully_frozen", False):
                sides.append(side)
        return sides

    def with_tokens_for(self, side: str) -> bool:
        """Whether token sequences are stored: for ``video_frames`` when the temporal model reads the
        frames' grid tokens (``grid=true``), otherwise when the fusion reads tokens (or ``cache.tokens=true``)."""
        if side == "video_frames":
            return bool(self.encoder("video").grid)
        return self.settings.tokens == "true" or bool(getattr(self.model.fusion, "needs_tokens", True))

    # -- keys ------------------------------------------------------------------------------------
    def encoder_identity(self, side: str) -> dict[str, Any]:
        if side not in self._encoder_identity:  # weights are hashed once per run (seconds for BERT-base)
            encoder = self.encoder(side)
            self._encoder_identity[side] = {**code_identity(encoder), "config": self.encoder_configs[side],
                                            "weights_sha256": weights_digest(encoder)}
        return self._encoder_identity[side]

    def key_parts(self, side: str, dataset: Any, regime: str, tokens: bool, source: Any = None) -> dict[str, Any]:
        parts: dict[str, Any] = {"format": FORMAT_VERSION, "side": side, "encoder": self.encoder_identity(side),
                                 "regime": regime, "dtype": self.settings.dtype, "tokens": tokens}
        if source is not None:
            parts["transform"] = source.describe()
            parts["data"] = f"source:{source.fingerprint()}"
        elif side != "text":
            parts["transform"] = describe_transform(dataset.transform)
            parts["data"] = images_fingerprint(dataset.images)
        else:
            parts["tokenizer"] = describe_tokenizer(getattr(self.model.text_encoder, "tokenizer", None))
            parts["data"] = texts_fingerprint(dataset.text)
        return parts

    # -- wrapping ----------------------------------------------------------------------------------
    def wrap(self, splits: dict[str, Dataset | None], trainer: Any = None) -> dict[str, Dataset | None]:
        """The splits with the frozen encoders' inputs replaced by cached features."""
        sides = self.cached_sides()
        if not self.settings.enabled or not sides:
            return splits
        device, regime, autocast = _regime(trainer)
        # encoding must not move the random streams training draws from (negatives, dropout, worker
        # seeds): with and without the cache, training sees the same random numbers
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return self._wrap(splits, sides, device, regime, autocast)

    def _wrap(self, splits: dict[str, Dataset | None], sides: list[str], device: torch.device, regime: str,
              autocast: Any) -> dict[str, Dataset | None]:
        out: dict[str, Dataset | None] = {}
        for name, dataset in splits.items():
            if dataset is not None and not isinstance(dataset, PairDataset) and hasattr(dataset, "feature_sources"):
                out[name] = self._wrap_sources(name, dataset, sides, device, regime, autocast)
                continue
            if not isinstance(dataset, PairDataset):
                if dataset is not None:
                    log.info("feature cache: split %s is a %s, not a PairDataset; not cached", name, type(dataset).__name__)
                out[name] = dataset
                continue
            dataset = copy.copy(dataset)
            for side in sides:
                if side != "text" and side_modality(side) != item_modality(dataset):
                    log.info("feature cache: split %s holds %s items, not %s; its %s side is not cached",
                             name, item_modality(dataset), side_modality(side), side)
                    continue
                store = self.features_for(side, name, dataset, device, regime, autocast)
                if side == "text":
                    dataset.text = store
                else:
                    dataset.images = store
            out[name] = dataset
        return out

    def _wrap_sources(self, name: str, dataset: Any, sides: list[str], device: torch.device, regime: str,
                      autocast: Any) -> Any:
        """A copy of a split with ``feature_sources()`` whose frozen sides read cached features."""
        dataset = copy.copy(dataset)
        dataset.cached = dict(dataset.cached)
        sources = dataset.feature_sources()
        for side in sides:
            modality = side_modality(side)
            if side != "text" and modality not in sources:
                log.info("feature cache: split %s has no %s items; its %s side is not cached", name, modality, side)
                continue
            store = self.features_for(side, name, dataset, device, regime, autocast, sources.get(modality))
            if side == "text":
                dataset.text = store
            else:
                dataset.cached[modality] = store
        return dataset

    def features_for(self, side: str, split: str, dataset: Any, device: torch.device, regime: str,
                     autocast: Any, source: Any = None) -> CachedFeatures:
        tokens = self.with_tokens_for(side)
        source = None if side == "text" else source
        parts = self.key_parts(side, dataset, regime, tokens, source)
        key = key_of(parts)
        if not tokens and self.settings.mode == "auto":  # an entry with tokens also serves pooled-only use
            full = key_of({**parts, "tokens": True})
            if self._valid(self.root / full):
                return self._use(split, side, full, "hit", tokens)
        _, status = self.entry(key, parts, lambda w: self._encode(w, side, split, dataset, device, autocast, tokens,
                                                                 source))
        return self._use(split, side, key, status, tokens)

    def _use(self, split: str, side: str, key: str, status: str, tokens: bool) -> CachedFeatures:
        path = self.root / key
        self.report.setdefault(split, {})[side] = {"key": key, "status": status, "path": str(path)}
        log.info("feature cache: %s %s features: %s (%s)", split, side, status, path)
        store = CachedFrameFeatures if side == "video_frames" else CachedFeatures
        return store(path, with_tokens=tokens)

    # -- the entry protocol --------------------------------------------------------------------------
    def _valid(self, path: Path, fresh_only: bool = False) -> bool:
        try:
            manifest, _ = open_entry(path, self.settings.verify)
        except CacheCorrupt:
            return False
        return not fresh_only or manifest.get("created_at", 0) >= PROCESS_START

    def entry(self, key: str, parts: dict[str, Any], build: Any) -> tuple[Path, str]:
        """``(path, status)`` of a valid entry for ``key``, building it (once, under the lock) if needed."""
        path = self.root / key
        rebuild = self.settings.mode == "rebuild"
        if self._valid(path, fresh_only=rebuild):
            return path, "hit"
        self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.root / f"{key}.lock"))
        with lock:
            reason, existed = None, path.exists()
            try:
                manifest, _ = open_entry(path, self.settings.verify)
                if not rebuild or manifest.get("created_at", 0) >= PROCESS_START:
                    return path, "hit"
            except CacheCorrupt as e:
                reason = str(e) if path.exists() else None
            if reason:
                log.warning("feature cache: %s; rebuilding the entry", reason)
            for stale in remove_stale(self.root, key):
                log.warning("feature cache: removed %s, left by a writer that did not finish", stale)
            writer = EntryWriter(self.root, key)
            try:
                info = build(writer)
                writer.publish({**info, "key_parts": parts, "created_by": {"host": socket.gethostname(),
                                                                           "pid": os.getpid()}})
            except BaseException:
                writer.abort()
                raise
        return path, "rebuilt" if (reason or (rebuild and existed)) else "built"

    def _encode(self, writer: EntryWriter, side: str, split: str, dataset: Any, device: torch.device,
                autocast: Any, tokens: bool, source: Any = None) -> dict[str, Any]:
        s = self.settings
        dtype = as_numpy_dtype(s.dtype)
        encoder = self.encoder(side).to(device)
        name = type(encoder).__name__
        if source is not None:
            failed: dict[int, str] = {}
            batches = enc.source_batches(source, s.batch_size, s.num_workers or 0, device, side == "audio", failed)
            encode = {"audio": self.model.encode_audio,
                      "image": lambda x: self.model.encode_image({"image": x})}.get(side) or self._video_encode(side)
            info = enc.encode_into(writer, batches, encode, len(source), tokens, dtype,
                                   f"encoding {split} {side} items ({name})", autocast=autocast())
            # JSON keys are strings; CachedFeatures.failed gives them back as ints
            return {"side": side, "split": split, "samples": len(source), "dtype": s.dtype, "tokens": tokens,
                    "failed": {str(i): r for i, r in sorted(failed.items())}, **info}
        if side in ("video", "video_frames"):
            batches = enc.image_batches(dataset.images, dataset.transform, s.batch_size, s.num_workers or 0, device,
                                        decode_on_device=False)
            what = "clips" if side == "video" else "clips' frames"
            info = enc.encode_into(writer, batches, self._video_encode(side), len(dataset.images), tokens, dtype,
                                   f"encoding {split} {what} ({name})", autocast=autocast())
        elif side == "audio":
            batches = enc.audio_batches(dataset.images, dataset.transform, s.batch_size, device)
            info = enc.encode_into(writer, batches, self.model.encode_audio, len(dataset.images), tokens, dtype,
                                   f"encoding {split} sounds ({name})", autocast=autocast())
        elif side == "image":
            store = dataset.images
            decode = s.decode == "auto" and device.type == "cuda" and enc.has_file_bytes(store) \
                and enc.decode_on(device, dataset.transform)
            batches = enc.image_batches(store, dataset.transform, s.batch_size, s.num_workers or 0, device, decode)
            info = enc.encode_into(writer, batches, lambda x: self.model.encode_image({"image": x}), len(store),
                                   tokens, dtype, f"encoding {split} images ({name})", autocast=autocast())
            info["decoded_on"] = device.type if decode else "cpu"
        else:
            text = dataset.text
            batches = enc.text_batches(text, s.batch_size, device)
            info = enc.encode_into(writer, batches, self.model.encode_text, len(text["input_ids"]), tokens, dtype,
                                   f"encoding {split} texts ({name})", max_tokens=text["input_ids"].shape[1],
                                   autocast=autocast())
        samples = len(dataset.text["input_ids"]) if side == "text" else len(dataset.images)
        return {"side": side, "split": split, "samples": samples, "dtype": s.dtype, "tokens": tokens, **info}

    def _video_encode(self, side: str) -> Any:
        """Clips ``[B, T, 3, H, W]`` -> the video encoder's output, or its frame encoder's (counted in
        ``encoded_samples["video"]``, as ``FusionModel.encode_video`` counts the clips it encodes)."""
        if side == "video":
            return lambda x: self.model.encode_video({"video": x})

        def frames(x: torch.Tensor) -> Any:
            self.model.encoded_samples["video"] += x.shape[0]
            return self.model.video_encoder.encode_frames(x)
        return frames


def _regime(trainer: Any) -> tuple[torch.device, str, Any]:
    """Device, a label of the numeric regime (part of the key) and the autocast context to encode in.

    The label holds what changes the encoders' numbers: device type, trainer precision (autocast
    dtype) and float32 matmul precision (TF32 on GPUs)."""
    matmul = torch.get_float32_matmul_precision()
    if trainer is None:
        return torch.device("cpu"), f"cpu/32-true/matmul-{matmul}", contextlib.nullcontext
    device = trainer.strategy.root_device
    return device, f"{device.type}/{trainer.precision}/matmul-{matmul}", trainer.precision_plugin.forward_context
