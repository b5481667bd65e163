"""Feature cache for frozen encoders: encode once per (encoder, preprocessing, split), then memory-map.

See ``cache.FeatureCache`` (the protocol), ``keys`` (what a key is made of), ``storage`` (atomic
entries, manifest, checks), ``store.CachedFeatures`` (what ``PairDataset`` reads), ``encode`` (the
encoding loops) and ``settings`` (the ``cache`` config group).
"""

from mmfuse.features.cache import FeatureCache
from mmfuse.features.settings import CacheSettings, cache_settings
from mmfuse.features.storage import CacheCorrupt
from mmfuse.features.store import CachedFeatures, CachedFrameFeatures

__all__ = ["CacheCorrupt", "CacheSettings", "CachedFeatures", "CachedFrameFeatures", "FeatureCache", "cache_settings"]
