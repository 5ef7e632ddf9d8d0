"""The OpenVINO image tower (an explicit `--backend openvino`): agrees with torch within the
export check's bound (fp32: the ONNX bound; bf16: no worse than torch bf16 itself), is cached
by checkpoint and precision, refuses a disagreeing export, and `auto` never picks it."""

from __future__ import annotations

import copy
import json
import random
import sys

import numpy as np
import pytest
import torch

from fsq.classify import onnx_backend, openvino_backend
from fsq.classify.clip import ClipClassifier
from fsq.classify.concepts import load_concepts
from fsq.errors import ConfigError
from tests.fixtures.images import jpeg_bytes, synthetic_image
from tests.fixtures.model import concepts_file

pytest.importorskip("openvino")
pytest.importorskip("onnx")

DEFAULT = load_concepts(None)


def make(tiny_model, cache, **kw) -> ClipClassifier:
    config, ckpt = tiny_model
    kw.setdefault("precision", "fp32")
    return ClipClassifier(model=str(config), pretrained=str(ckpt), concepts=DEFAULT,
                          device="cpu", cache_dir=str(cache), **kw)


def frames(clf, n=12):
    rng = random.Random(5)
    return torch.stack([clf.preprocess(synthetic_image(rng, 50 + 7 * i, 40 + 3 * i))
                        for i in range(n)])


def _records(cache):
    return [json.loads(p.read_text()) for p in sorted((cache / "openvino").glob("*.json"))]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_tower_agrees_with_torch_within_the_bound(tiny_model, tmp_path, precision):
    ov_clf = make(tiny_model, tmp_path, backend="openvino", precision=precision)
    ref = make(tiny_model, tmp_path, backend="torch", precision="fp32")
    assert ov_clf.backend == "openvino" and ov_clf.precision == precision
    assert ov_clf.model is None            # the torch image tower is released
    (rec,) = _records(tmp_path)
    assert rec["ok"] and rec["precision"] == precision and rec["cosine"] >= rec["bound"]
    if precision == "fp32":
        assert rec["bound"] == onnx_backend.MIN_COSINE
    else:
        assert openvino_backend.BF16_FLOOR <= rec["bound"] < onnx_backend.MIN_COSINE
    x = frames(ref)
    a, b = ov_clf.embed_images(x), ref.embed_images(x)
    assert (a * b).sum(axis=1).min() >= rec["bound"]
    sim = np.abs(ov_clf.similarities(x) - ref.similarities(x)).max()
    assert sim < (1e-5 if precision == "fp32" else 0.005), sim
    if precision == "fp32":   # bf16 may move a frame sitting on a threshold, like torch bf16
        assert [d.flagged for d, _ in ov_clf.classify_items([[f] for f in x])] == \
            [d.flagged for d, _ in ref.classify_items([[f] for f in x])]


def test_cached_graph_is_reused_and_a_damaged_one_exported_again(tiny_model, tmp_path,
                                                                 monkeypatch):
    make(tiny_model, tmp_path, backend="openvino")
    (graph,) = sorted((tmp_path / "openvino").glob("*.onnx"))
    real = openvino_backend._export
    monkeypatch.setattr(openvino_backend, "_export",
                        lambda *a: pytest.fail("exported again although the cache is valid"))
    assert make(tiny_model, tmp_path, backend="openvino").backend == "openvino"
    graph.write_bytes(b"not an onnx graph")   # swapped or damaged: never compiled
    calls = []
    monkeypatch.setattr(openvino_backend, "_export", lambda *a: calls.append(1) or real(*a))
    assert make(tiny_model, tmp_path, backend="openvino").backend == "openvino"
    assert calls == [1] and graph.read_bytes() != b"not an onnx graph"


def test_a_disagreeing_export_is_refused_and_remembered(tiny_model, tmp_path, monkeypatch):
    real = openvino_backend._export

    def disagreeing(visual, size):
        bad = copy.deepcopy(visual)
        with torch.no_grad():
            for p in bad.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        return real(bad, size)

    monkeypatch.setattr(openvino_backend, "_export", disagreeing)
    with pytest.raises(ConfigError, match="backend openvino: OpenVINO fp32 disagrees"):
        make(tiny_model, tmp_path, backend="openvino")
    assert list((tmp_path / "openvino").glob("*.onnx")) == []   # never kept
    assert [r["ok"] for r in _records(tmp_path)] == [False]
    monkeypatch.setattr(openvino_backend, "_export", lambda *a: pytest.fail("exported again"))
    with pytest.raises(ConfigError, match="failed its check earlier"):
        make(tiny_model, tmp_path, backend="openvino")


def test_missing_package_fp16_cuda_and_auto(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_backend, "_export", lambda *a: pytest.fail("no export"))
    assert make(tiny_model, tmp_path, backend="auto", precision="bf16").backend == "torch"
    assert make(tiny_model, tmp_path, backend="auto").backend in ("torch", "onnx")
    with pytest.raises(ConfigError, match="fp16"):   # refused before any backend on a CPU
        make(tiny_model, tmp_path, backend="openvino", precision="fp16")
    with pytest.raises(ConfigError, match="CPU only"):
        onnx_backend.resolve("openvino", "cuda", "bf16")
    with pytest.raises(ConfigError, match="int8 runs on ONNX Runtime"):
        make(tiny_model, tmp_path, backend="openvino", precision="int8")
    monkeypatch.setitem(sys.modules, "openvino", None)   # `import openvino` fails
    with pytest.raises(ConfigError, match=r"openvino is not installed: pip install "
                                          r"'fsq\[openvino\]'"):
        make(tiny_model, tmp_path, backend="openvino")


def test_scan_with_backend_openvino_matches_torch(tiny_model, tmp_path, fsq):
    store = tmp_path / "store"
    for i in range(4):
        (store / f"0{i}").mkdir(parents=True)
        (store / f"0{i}" / f"i{i}.jpeg").write_bytes(jpeg_bytes(40 + i, 30, seed=i))
    cfg, ckpt = tiny_model
    out = {}
    for backend in ("torch", "openvino"):
        r = fsq(["scan", "--all", "--dry-run", "--source", f"file://{store}", "--model",
                 str(cfg), "--pretrained", str(ckpt), "--concepts",
                 str(concepts_file(tmp_path, 0.0)), "--precision", "fp32", "--backend",
                 backend, "--db", f"{backend}.db", "--json"])
        assert r.exit_code == 0, r.stderr
        out[backend] = json.loads(r.stdout)
    assert out["openvino"]["classified"] == 4
    assert out["openvino"]["flagged"] == out["torch"]["flagged"]
