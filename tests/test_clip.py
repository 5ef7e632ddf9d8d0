"""The CLIP runner, end to end with the tiny random-weight model (no network, no real content).

The tiny model goes through the same path users take: a model-config JSON plus a checkpoint
file passed to ClipClassifier.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fsq.classify.clip import ClipClassifier
from fsq.classify.concepts import load_concepts
from fsq.classify.precision import _cpu_flags, detect_precision, resolve_precision
from fsq.classify.rule import decide
from fsq.classify.tiny import write_tiny_model
from fsq.errors import ConfigError, ExternalError
from tests.fixtures.model import concepts_file

DEFAULT = load_concepts(None)


def synthetic_images(n: int, seed: int = 0) -> list[Image.Image]:
    """Smooth coloured patterns of assorted sizes and aspect ratios (some over 512 px)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(24, 900)), int(rng.integers(24, 900))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        chans = [np.sin(xx / rng.uniform(4, 60) + rng.uniform(0, 6))
                 + np.cos(yy / rng.uniform(4, 60) + rng.uniform(0, 6)) for _ in range(3)]
        arr = np.clip(np.stack(chans, -1) * 60 + 128, 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, "RGB"))
    return out


@pytest.fixture(scope="module")
def clf(tiny_model, tmp_path_factory) -> ClipClassifier:
    config, ckpt = tiny_model
    return ClipClassifier(model=str(config), pretrained=str(ckpt), concepts=DEFAULT,
                          precision="fp32", device="cpu",
                          cache_dir=str(tmp_path_factory.mktemp("clip-cache")))


def make(tiny_model, **kw) -> ClipClassifier:
    config, ckpt = tiny_model
    kw.setdefault("concepts", DEFAULT)
    kw.setdefault("precision", "fp32")
    return ClipClassifier(model=str(config), pretrained=str(ckpt), **kw)


# --- loading -----------------------------------------------------------------------------------

def test_loads_from_config_json_and_checkpoint(clf, tiny_model):
    _, ckpt = tiny_model
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert clf.model_id == f"fsq-tiny-clip/file:{sha[:16]}"
    assert clf.image_size == (64, 64)
    assert clf.device == "cpu" and clf.precision == "fp32"
    # thresholds are for ViT-L-14/openai: the mismatch is reported
    assert any("calibrated for ViT-L-14/openai" in w and clf.model_id in w
               for w in clf.warnings)
    assert clf.describe()["concepts_digest"] == DEFAULT.digest


def test_no_calibration_warning_when_the_set_names_this_model(tiny_model, tmp_path, clf):
    path = concepts_file(tmp_path, 0.2, calibrated_for=clf.model_id)
    other = make(tiny_model, concepts=load_concepts(str(path)), cache_dir=str(tmp_path))
    assert other.warnings == []


def test_config_file_named_like_a_builtin_does_not_collide(tiny_model, tmp_path):
    import open_clip

    config, ckpt = tiny_model
    fake = tmp_path / "ViT-B-32.json"
    fake.write_text(config.read_text())
    c = ClipClassifier(model=str(fake), pretrained=str(ckpt), concepts=DEFAULT,
                       precision="fp32", cache_dir=str(tmp_path))
    assert c.model_id.startswith("ViT-B-32/file:")
    assert c.text_embeddings.shape == (len(DEFAULT.concepts), 32)
    # the builtin is untouched
    assert open_clip.get_model_config("ViT-B-32")["embed_dim"] == 512


def test_missing_checkpoint(tiny_model, tmp_path):
    config, _ = tiny_model
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(ConfigError, match="checkpoint file not found") as exc:
        ClipClassifier(model=str(config), pretrained=str(missing), concepts=DEFAULT,
                       cache_dir=str(tmp_path))
    assert str(missing) in str(exc.value)


def test_corrupt_checkpoint(tiny_model, tmp_path):
    config, _ = tiny_model
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(ConfigError, match="not a usable checkpoint") as exc:
        ClipClassifier(model=str(config), pretrained=str(bad), concepts=DEFAULT,
                       cache_dir=str(tmp_path))
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_checkpoint_for_another_architecture(tiny_model, tmp_path):
    config, ckpt = tiny_model
    cfg = json.loads(config.read_text())
    cfg["embed_dim"] = 16
    other = tmp_path / "other.json"
    other.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="not a usable checkpoint for other") as exc:
        ClipClassifier(model=str(other), pretrained=str(ckpt), concepts=DEFAULT,
                       cache_dir=str(tmp_path))
    assert str(ckpt) in str(exc.value)


@pytest.mark.parametrize("model, needle", [
    ("ViT-L-41", "did you mean"),
    ("no-such-model", "unknown open_clip architecture"),
])
def test_unknown_architecture(model, needle, tmp_path):
    with pytest.raises(ConfigError, match=needle):
        ClipClassifier(model=model, pretrained="openai", concepts=DEFAULT,
                       cache_dir=str(tmp_path))


def test_bad_model_config_file(tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text('{"embed_dim": 32}')
    with pytest.raises(ConfigError, match="missing 'vision_cfg'"):
        ClipClassifier(model=str(bad), pretrained="x.pt", concepts=DEFAULT,
                       cache_dir=str(tmp_path))


def test_unknown_tag(tmp_path):
    with pytest.raises(ConfigError, match="did you mean openai"):
        ClipClassifier(model="ViT-B-32", pretrained="opnai", concepts=DEFAULT,
                       cache_dir=str(tmp_path))


def test_tag_download_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # An empty Hub cache, whatever this machine has downloaded before.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(ExternalError) as exc:
        ClipClassifier(model="ViT-B-32", pretrained="openai", concepts=DEFAULT,
                       cache_dir=str(tmp_path))
    assert time.monotonic() - start < 15
    msg = str(exc.value)
    assert "ViT-B-32/openai" in msg
    assert "download the checkpoint on a machine with internet and pass --pretrained " \
           "/path/to/file" in msg
    assert exc.value.exit_code == 3


# --- checkpoint hash cache ---------------------------------------------------------------------

def test_checkpoint_hash_is_cached_by_path_size_mtime(tmp_path):
    config, ckpt = write_tiny_model(tmp_path / "m", seed=3)
    cache = tmp_path / "cache"
    first = make((config, ckpt), cache_dir=str(cache))
    index = cache / "checkpoint-sha256.json"
    data = json.loads(index.read_text())
    entry = data[os.path.realpath(ckpt)]
    assert entry["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    # A planted hash for the same (size, mtime) is trusted: proof the file is not re-hashed.
    entry["sha256"] = "ab" * 32
    index.write_text(json.dumps(data))
    assert make((config, ckpt), cache_dir=str(cache)).model_id.endswith("/file:" + "ab" * 8)
    # A new mtime invalidates the entry.
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert make((config, ckpt), cache_dir=str(cache)).model_id == first.model_id


# --- similarities and batching -----------------------------------------------------------------

def test_similarities_shape_and_range(clf):
    x = torch.stack([clf.preprocess(im) for im in synthetic_images(5)])
    assert x.shape == (5, 3, 64, 64) and x.dtype == torch.float32
    s = clf.similarities(x)
    assert s.shape == (5, len(DEFAULT.concepts)) and s.dtype == np.float32
    assert np.all(s >= -1) and np.all(s <= 1)
    assert np.allclose(np.linalg.norm(clf.text_embeddings, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(clf.embed_images(x), axis=1), 1, atol=1e-5)
    with pytest.raises(ValueError):
        clf.embed_images(torch.zeros(2, 1, 64, 64))


def test_batch_equals_one_by_one(clf):
    x = torch.stack([clf.preprocess(im) for im in synthetic_images(6, seed=1)])
    batched = clf.similarities(x)
    single = np.concatenate([clf.similarities(x[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(batched, single, atol=2e-5)


def test_classify_items_any_frame_flags(clf, tiny_model, tmp_path):
    frames = [clf.preprocess(im) for im in synthetic_images(8, seed=2)]
    sims = clf.similarities(torch.stack(frames))
    texts = DEFAULT.texts

    # With every threshold (and critical) at t, a frame flags iff its best underage score and
    # its best lewd score both exceed t. Order two frames so only the second flags.
    def key(row):
        under = max(row[texts.index(t)] for t in ("child", "children", "teen", "teens"))
        lewd = max(row[texts.index(t)] for t in ("porn", "naked"))
        return min(under, lewd)

    keys = [key(r) for r in sims]
    lo, hi = int(np.argmin(keys)), int(np.argmax(keys))
    assert keys[hi] - keys[lo] > 0.002
    t = round(float(keys[lo] + keys[hi]) / 2, 6)
    cs = load_concepts(str(concepts_file(tmp_path, t)))
    c = make(tiny_model, concepts=cs, cache_dir=str(tmp_path))
    items = [[frames[lo], frames[hi]], [frames[lo]], [frames[hi], frames[lo], frames[lo]]]
    results = c.classify_items(items)
    assert [(d.flagged, i) for d, i in results] == [(True, 1), (False, 0), (True, 0)]
    # same answer in chunks, and equal to deciding frame by frame
    assert [(d.to_json(), i) for d, i in c.classify_items(items, batch_size=2)] == \
        [(d.to_json(), i) for d, i in results]
    one = c.similarities(torch.stack([frames[hi]]))[0]
    assert results[0][0].to_json() == decide(dict(zip(cs.texts, one.tolist())), cs).to_json()
    with pytest.raises(ValueError):
        c.classify_items([[]])


@pytest.mark.parametrize("value, flagged", [(-1.0, True), (1.5, False)])
def test_uniform_thresholds_end_to_end(tiny_model, tmp_path, value, flagged):
    c = make(tiny_model, concepts=load_concepts(str(concepts_file(tmp_path, value))),
             cache_dir=str(tmp_path))
    frames = [c.preprocess(im) for im in synthetic_images(3, seed=4)]
    assert [d.flagged for d, _ in c.classify_items([[f] for f in frames])] == [flagged] * 3


# --- preprocessing -----------------------------------------------------------------------------

def test_preprocess_matches_open_clip(clf):
    import open_clip.transform as oct

    cfg = oct.PreprocessCfg(**clf.model.visual.preprocess_cfg)
    reference = oct.image_transform_v2(cfg, is_train=False)
    images = synthetic_images(10, seed=5) + [
        Image.new("RGB", (2000, 37), (200, 10, 10)), Image.new("RGB", (5, 5), (1, 2, 3))]
    for im in images:
        before = im.tobytes()
        ours = clf.preprocess(im).numpy()
        shrunk = im.copy()
        shrunk.thumbnail((512, 512))  # the reference shrinks to fit 512x512 first
        theirs = reference(shrunk).numpy()
        assert ours.shape == theirs.shape == (3, 64, 64)
        diff = np.abs(ours - theirs)
        # Identical up to one uint8 level (1/255/std ~ 0.015) at a few crop-edge pixels.
        assert diff.max() < 0.02 and diff.mean() < 1e-4, im.size
        assert im.tobytes() == before  # the caller's image is untouched


def test_preprocess_other_modes(clf):
    base = synthetic_images(1, seed=6)[0]
    for mode in ("L", "RGBA", "P", "CMYK", "1"):
        t = clf.preprocess(base.convert(mode))
        assert t.shape == (3, 64, 64) and torch.isfinite(t).all()


# --- text-embedding cache ----------------------------------------------------------------------

def test_text_embedding_cache_created_reused_and_repaired(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    first = make(tiny_model, cache_dir=str(cache))
    assert first.text_cache_hit is False
    npy = first.text_cache_path
    meta = npy.with_suffix(".json")
    assert npy.is_file() and meta.is_file() and npy.parent.parent == cache
    mtime = npy.stat().st_mtime_ns

    second = make(tiny_model, cache_dir=str(cache))
    assert second.text_cache_hit is True and second.text_cache_path == npy
    assert npy.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.text_embeddings, first.text_embeddings)

    for damage in (lambda: npy.write_bytes(b"\x93NUMPY garbage"),
                   lambda: meta.write_text("{not json"),
                   lambda: npy.unlink()):
        damage()
        again = make(tiny_model, cache_dir=str(cache))
        assert again.text_cache_hit is False
        np.testing.assert_allclose(again.text_embeddings, first.text_embeddings, atol=1e-6)
        assert make(tiny_model, cache_dir=str(cache)).text_cache_hit is True


def test_text_cache_is_keyed_by_concept_set_and_default_dir(tiny_model, tmp_path):
    # no cache_dir: $XDG_CACHE_HOME/fsq (conftest points XDG_CACHE_HOME into tmp_path)
    a = make(tiny_model)
    assert str(a.text_cache_path).startswith(os.path.join(os.environ["XDG_CACHE_HOME"], "fsq"))
    other = load_concepts(str(concepts_file(tmp_path, 0.3)))
    b = make(tiny_model, concepts=other)
    assert b.text_cache_hit is False and b.text_cache_path != a.text_cache_path


# --- precision ---------------------------------------------------------------------------------

def test_auto_precision_follows_the_cpu(clf):
    flags = _cpu_flags()
    expected = "bf16" if {"amx_bf16", "avx512_bf16"} & flags else "fp32"
    assert detect_precision("cpu")[0] == expected
    assert detect_precision("cuda")[0] == "fp16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError):
        resolve_precision("fp8", "cpu")


def test_bf16_agrees_with_fp32(clf, tiny_model, tmp_path):
    """bf16 keeps 8 significant bits (each rounding is up to 2^-9 ~ 0.002 relative). The
    tiny random-weight tower (width 64, embed 32) averages little of that out: over 4 model
    seeds x 48 images we measured max |diff| 0.0034, mean 0.0007. 0.003 is therefore not an
    honest bound for random weights; we assert max < 0.005 and mean < 0.0015. Text
    embeddings are computed in fp32 in both cases, so only the image tower differs."""
    b = make(tiny_model, precision="bf16", cache_dir=str(tmp_path))
    assert b.precision == "bf16"
    assert next(b.model.parameters()).dtype == torch.bfloat16
    x = torch.stack([clf.preprocess(im) for im in synthetic_images(16, seed=7)])
    s32, s16 = clf.similarities(x), b.similarities(x)
    diff = np.abs(s32 - s16)
    assert diff.max() < 0.005 and diff.mean() < 0.0015, (diff.max(), diff.mean())

    # Verdicts agree when no score sits within the precision error of a threshold. With every
    # threshold (and critical) of a uniform set at t, an image flags iff its best underage and
    # its best lewd score both exceed t; put t in the widest gap between those per-image
    # values, so some images flag and some do not.
    under = [DEFAULT.texts.index(t) for t in ("child", "children", "teen", "teens")]
    lewd = [DEFAULT.texts.index(t) for t in ("porn", "naked")]
    k = np.sort(np.minimum(s32[:, under].max(1), s32[:, lewd].max(1)))
    gaps = np.diff(k)
    i = int(np.argmax(gaps))
    assert gaps[i] > 2 * diff.max()
    t = round(float(k[i] + k[i + 1]) / 2, 6)
    cs = load_concepts(str(concepts_file(tmp_path, t)))
    cols = [DEFAULT.texts.index(c) for c in cs.texts]
    v32 = [decide(dict(zip(cs.texts, r.tolist())), cs).flagged for r in s32[:, cols]]
    assert 0 < sum(v32) < len(v32)
    c16 = make(tiny_model, precision="bf16", concepts=cs, cache_dir=str(tmp_path))
    v16 = [d.flagged for d, _ in c16.classify_items([[f] for f in x])]
    assert v16 == v32


def test_threads_setting(tiny_model, tmp_path):
    before = torch.get_num_threads()
    try:
        c = make(tiny_model, threads=1, cache_dir=str(tmp_path))
        assert torch.get_num_threads() == 1 and c.threads == 1
    finally:
        torch.set_num_threads(before)


def test_write_tiny_model_is_deterministic(tmp_path):
    _, a = write_tiny_model(tmp_path / "a", seed=1)
    _, b = write_tiny_model(tmp_path / "b", seed=1)
    _, c = write_tiny_model(tmp_path / "c", seed=2)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_torchscript_checkpoint_loads(tiny_model, tmp_path, clf):
    """OpenAI's original .pt files are TorchScript archives (torch.load with weights_only
    refuses them); a scripted tiny model stands in for one."""
    import json as _json
    import warnings

    from open_clip.model import CLIP

    from fsq.classify.tiny import TINY_CONFIG

    config, ckpt = tiny_model
    m = CLIP(**_json.loads(_json.dumps(TINY_CONFIG)))
    m.load_state_dict(torch.load(ckpt, weights_only=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(m.eval()).save(str(tmp_path / "ViT-tiny.pt"))
        c = ClipClassifier(model=str(config), pretrained=str(tmp_path / "ViT-tiny.pt"),
                           concepts=DEFAULT, precision="fp32", cache_dir=str(tmp_path))
    x = torch.stack([clf.preprocess(im) for im in synthetic_images(3, seed=8)])
    np.testing.assert_allclose(c.similarities(x), clf.similarities(x), atol=1e-6)


def test_local_file_of_a_published_tag_is_recognised():
    import open_clip

    # open_clip lists OpenAI's download URL, which embeds the file's sha256.
    sha = open_clip.get_pretrained_cfg("ViT-L-14", "openai")["url"].split("/")[-2]
    assert ClipClassifier._tag_for_sha256(open_clip, "ViT-L-14", sha) == "openai"
    assert ClipClassifier._tag_for_sha256(open_clip, "ViT-L-14", "0" * 64) is None
