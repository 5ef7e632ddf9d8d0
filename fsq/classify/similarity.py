"""Cosine similarities of image and text embeddings (numpy only, no torch).

The one formula the scan (fsq.classify.clip) and `fsq rescore` (fsq.rescore, from stored
embeddings) both use, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np


def similarities_of(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """n x d unit image embeddings, k x d unit text embeddings -> n x k float32 cosines."""
    sims = np.asarray(image_embeddings, dtype=np.float32) @ text_embeddings.T
    # Unit vectors, but float rounding can give 1.0000001.
    return np.clip(sims, -1.0, 1.0).astype(np.float32, copy=False)
