"""API key pools: per-key limits shared across processes, rotation, backoff, a local proxy."""

from abreast.keys.pool import AllKeysLimited, KeyPool, fingerprint

__all__ = ["AllKeysLimited", "KeyPool", "fingerprint"]
