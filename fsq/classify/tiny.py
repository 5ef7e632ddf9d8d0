"""A tiny random-weight CLIP model, written as an open_clip config JSON plus a checkpoint.

Why this exists: the test suite and ``fsq demo`` need to run the real classifier code path
(config registration, checkpoint loading, hashing, text-embedding cache, preprocessing, batching,
precision) on machines without the 1.7 GB ViT-L-14 weights and without internet. The model is
loaded exactly the way users load theirs::

    ClipClassifier(model=str(config_json), pretrained=str(checkpoint), ...)

Its similarities are meaningless (random weights), so it is only for exercising the machinery.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_NAME = "fsq-tiny-clip.json"
CHECKPOINT_NAME = "fsq-tiny-clip.pt"

# Small enough to build in well under a second; the text tower keeps CLIP's real tokenizer
# vocabulary and context length so the real open_clip tokenizer works with it.
TINY_CONFIG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2,
                   "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 1},
}


def write_tiny_model(directory: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``(config_json, checkpoint)`` into ``directory``; same seed -> same weights."""
    import torch
    from open_clip.model import CLIP

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    config_path = d / CONFIG_NAME
    checkpoint_path = d / CHECKPOINT_NAME
    config_path.write_text(json.dumps(TINY_CONFIG, indent=2) + "\n", encoding="utf-8")

    # Fork the RNG so writing a model does not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**json.loads(json.dumps(TINY_CONFIG)))
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = checkpoint_path.with_name(checkpoint_path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(checkpoint_path)
    return config_path, checkpoint_path
