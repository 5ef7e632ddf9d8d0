"""The ONNX Runtime image tower: agrees with torch within the export check's bound, is cached
by checkpoint, and `auto` falls back to torch when the extra is missing or the check fails
(an injected disagreement), while an explicit `onnx` says why in one line."""

from __future__ import annotations

import copy
import json
import random
import sys

import numpy as np
import pytest
import torch

from fsq.classify import onnx_backend
from fsq.classify.clip import ClipClassifier
from fsq.classify.concepts import load_concepts
from fsq.errors import ConfigError
from tests.fixtures.images import jpeg_bytes, synthetic_image
from tests.fixtures.model import concepts_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

DEFAULT = load_concepts(None)


def make(tiny_model, cache, **kw) -> ClipClassifier:
    config, ckpt = tiny_model
    kw.setdefault("precision", "fp32")
    return ClipClassifier(model=str(config), pretrained=str(ckpt), concepts=DEFAULT,
                          device="cpu", cache_dir=str(cache), **kw)


def frames(clf, n=12):
    rng = random.Random(4)
    return torch.stack([clf.preprocess(synthetic_image(rng, 50 + 7 * i, 40 + 3 * i))
                        for i in range(n)])


def _graphs(cache):
    return sorted((cache / "onnx").glob("*.onnx"))


def test_ort_tower_agrees_with_torch_within_the_bound(tiny_model, tmp_path):
    ort_clf = make(tiny_model, tmp_path, backend="onnx")
    torch_clf = make(tiny_model, tmp_path, backend="torch")
    assert ort_clf.backend == "onnx" and ort_clf.precision == "fp32"
    assert ort_clf.model is None  # the torch image tower is released
    assert ort_clf.describe()["backend"] == "onnx"
    x = frames(torch_clf)
    a, b = ort_clf.embed_images(x), torch_clf.embed_images(x)
    assert (a * b).sum(axis=1).min() >= onnx_backend.MIN_COSINE
    assert np.abs(ort_clf.similarities(x) - torch_clf.similarities(x)).max() < 1e-5
    assert [d.flagged for d, _ in ort_clf.classify_items([[f] for f in x])] == \
        [d.flagged for d, _ in torch_clf.classify_items([[f] for f in x])]
    (graph,) = _graphs(tmp_path)
    meta = json.loads(graph.with_suffix(".json").read_text())
    assert meta["ok"] and meta["cosine"] >= onnx_backend.MIN_COSINE
    assert meta["checkpoint_sha256"] and meta["onnxruntime"] and meta["torch"]


def test_cached_graph_is_reused_and_a_damaged_one_exported_again(tiny_model, tmp_path,
                                                                 monkeypatch):
    make(tiny_model, tmp_path, backend="onnx")
    (graph,) = _graphs(tmp_path)
    real = onnx_backend._export

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache is valid")

    monkeypatch.setattr(onnx_backend, "_export", no_export)
    assert make(tiny_model, tmp_path, backend="onnx").backend == "onnx"
    # A swapped or damaged graph file does not match its recorded sha256: exported again.
    graph.write_bytes(b"not an onnx graph")
    calls = []
    monkeypatch.setattr(onnx_backend, "_export", lambda *a: calls.append(1) or real(*a))
    assert make(tiny_model, tmp_path, backend="onnx").backend == "onnx"
    assert calls == [1] and graph.read_bytes() != b"not an onnx graph"


def test_auto_falls_back_to_torch_when_onnxruntime_is_missing(tiny_model, tmp_path,
                                                              monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    clf = make(tiny_model, tmp_path, backend="auto")
    assert clf.backend == "torch" and clf.model is not None
    assert "not installed" in clf.backend_reason and "fsq[onnx]" in clf.backend_reason
    x = frames(clf, 2)
    assert clf.embed_images(x).shape[0] == 2
    with pytest.raises(ConfigError, match=r"backend onnx: onnxruntime is not installed"):
        make(tiny_model, tmp_path, backend="onnx")


def test_auto_falls_back_when_the_export_check_fails(tiny_model, tmp_path, monkeypatch):
    real = onnx_backend._export

    def disagreeing(visual, size):
        # An exporter that gets the weights wrong: the graph computes something else.
        bad = copy.deepcopy(visual)
        with torch.no_grad():
            for p in bad.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        return real(bad, size)

    monkeypatch.setattr(onnx_backend, "_export", disagreeing)
    clf = make(tiny_model, tmp_path, backend="auto")
    assert clf.backend == "torch" and "disagrees with torch" in clf.backend_reason
    assert _graphs(tmp_path) == []  # a failed graph is never kept
    (meta,) = (tmp_path / "onnx").glob("*.json")
    assert json.loads(meta.read_text())["ok"] is False
    # The failure is remembered: no new export at the next start, torch again.
    monkeypatch.setattr(onnx_backend, "_export", lambda *a: pytest.fail("exported again"))
    again = make(tiny_model, tmp_path, backend="auto")
    assert again.backend == "torch" and "failed its check earlier" in again.backend_reason
    with pytest.raises(ConfigError, match="backend onnx: .*failed its check"):
        make(tiny_model, tmp_path, backend="onnx")


def test_auto_keeps_torch_where_bf16_is_used(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_backend, "_export", lambda *a: pytest.fail("no export wanted"))
    clf = make(tiny_model, tmp_path, backend="auto", precision="bf16")
    assert clf.backend == "torch" and clf.precision == "bf16"
    with pytest.raises(ConfigError, match="fp32 only"):
        make(tiny_model, tmp_path, backend="onnx", precision="bf16")
    with pytest.raises(ConfigError, match="CPU only"):
        onnx_backend.resolve("onnx", "cuda", "fp32")
    with pytest.raises(ConfigError, match="expected one of"):
        onnx_backend.resolve("tensorrt", "cpu", "fp32")


def test_scan_with_backend_onnx_matches_torch(tiny_model, tmp_path, fsq):
    store = tmp_path / "store"
    for i in range(4):
        (store / f"0{i}").mkdir(parents=True)
        (store / f"0{i}" / f"i{i}.jpeg").write_bytes(jpeg_bytes(40 + i, 30, seed=i))
    cfg, ckpt = tiny_model
    out = {}
    for backend in ("torch", "onnx"):
        r = fsq(["scan", "--all", "--dry-run", "--source", f"file://{store}", "--model",
                 str(cfg), "--pretrained", str(ckpt), "--concepts",
                 str(concepts_file(tmp_path, 0.0)), "--precision", "fp32", "--backend",
                 backend, "--db", f"{backend}.db", "--json"])
        assert r.exit_code == 0, r.stderr
        out[backend] = json.loads(r.stdout)
    assert out["onnx"]["classified"] == 4
    assert out["onnx"]["flagged"] == out["torch"]["flagged"]
    r = fsq(["scan", "--all", "--dry-run", "--source", f"file://{store}", "--model", str(cfg),
             "--pretrained", str(ckpt), "--backend", "onnx", "--precision", "bf16"])
    assert r.exit_code == 2 and "fp32 only" in r.stderr
