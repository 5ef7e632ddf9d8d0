"""fsq.classify: concept sets, the decision rule, and the CLIP runner.

The concept and rule modules are pure Python and import without torch; ``ClipClassifier`` and
``write_tiny_model`` need the ``[clip]`` extra and are imported on first use, so commands that
never run the model (audit, review, purge) do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fsq.classify.concepts import Concept, ConceptSet, load_concepts
from fsq.classify.precision import detect_precision, resolve_device, resolve_precision
from fsq.classify.rule import RULE_VERSION, SEVERITY_SHIFT, Decision, decide

if TYPE_CHECKING:  # pragma: no cover
    from fsq.classify.clip import ClipClassifier
    from fsq.classify.tiny import write_tiny_model

__all__ = [
    "RULE_VERSION", "SEVERITY_SHIFT", "ClipClassifier", "Concept", "ConceptSet", "Decision",
    "decide", "detect_precision", "load_concepts", "resolve_device", "resolve_precision",
    "write_tiny_model",
]

_LAZY = {"ClipClassifier": "fsq.classify.clip", "write_tiny_model": "fsq.classify.tiny"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fsq.classify' has no attribute {name!r}")
