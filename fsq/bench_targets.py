"""Issue 20's throughput targets, judged on one benchmark run (``python -m fsq.bench``).

Each target is a same-run ratio, never an absolute rate, so a noisy or shared machine moves
both sides together. A target whose measurement was not asked for says which option runs it,
so one command (docs/performance.md, "Issue 20 targets") prints all six.
"""

from __future__ import annotations

from typing import Any

#: Option that runs each measurement (for the "not run" lines).
_HOW = {"int8": "--modes model,ort-int8", "variants": "--variants-store N",
        "animations": "--animations N", "rescore": "--rescore-objects 100000",
        "decode": "--decode-cost N", "neighbour": "--neighbour 1 (with --models ViT-B-32)"}


def _ok(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _int8(result: dict[str, Any]) -> list[str]:
    """ORT int8 against the precision fsq chose (bf16 on a bf16 CPU, fp32 elsewhere), model
    only, one line per model measured: the end-to-end int8 path needs an approval by
    ``fsq model check`` on the admin's own weights, which random weights cannot honestly
    give. (The issue states the target for ViT-L-14.)"""
    vnni = {"avx512_vnni"} & set(result["machine"]["flags"])
    out = []
    for m in result["models"]:
        rows = {r["mode"]: r for r in m["rows"]}
        q, base = rows.get("ort-int8"), rows.get("model")
        if not (q and base and base["images_per_s"]):
            continue
        ratio = q["images_per_s"] / base["images_per_s"]
        want = 1.3 if vnni else 1.2
        out.append(f"{m['model']} int8 >= {want}x {m['precision'] or 'fsq'}'s rate "
                   f"({'VNNI' if vnni else 'no VNNI'}; model only, random weights): "
                   f"{_ok(ratio >= want)} ({ratio:.2f}x)")
    return out


def issue20(result: dict[str, Any]) -> list[str]:
    """One line per target: met / NOT met with the measured ratio, or how to run it."""
    out: list[str | None] = _int8(result) or [f"int8: not run ({_HOW['int8']})"]
    v = result.get("variants")
    if v and "ratio" in v:
        out.append(f"variant store, objects/s with linkage >= 2.5x files/s without: "
                   f"{_ok(v['ratio'] >= 2.5)} ({v['ratio']:.2f}x, {v['model']})")
    else:
        out.append(f"variant store: not run ({v['skipped'] if v else _HOW['variants']})")
    a = result.get("animations")
    if a:
        out.append(f"100-frame animations, frames classified <= 20% with the same verdicts: "
                   f"{_ok(a['ratio'] <= 0.20 and a['same_verdicts'])} "
                   f"({100 * a['ratio']:.1f}%, verdicts "
                   f"{'identical' if a['same_verdicts'] else 'DIFFERENT'})")
    else:
        out.append(f"animations: not run ({_HOW['animations']})")
    r = result.get("rescore")
    if r:
        ok = r["objects_per_s"] >= 20_000 and r["images_decoded"] == 0
        out.append(f"rescore of {r['objects']} stored embeddings >= 20,000 objects/s, none "
                   f"decoded: {_ok(ok)} ({r['objects_per_s']:.0f}/s, {r['images_decoded']} "
                   "decoded)")
    else:
        out.append(f"rescore: not run ({_HOW['rescore']})")
    d = result.get("decode_cost")
    if d:
        ratio = d["formats"]["all"]["ratio"]
        out.append(f"decode + preprocess CPU per file <= 70% of before: {_ok(ratio <= 0.70)} "
                   f"({100 * ratio:.0f}%)")
    else:
        out.append(f"decode cost: not run ({_HOW['decode']})")
    n = result.get("neighbour")
    if n:
        out.append(f"{n['model']} beside {n['neighbours']} busy process(es), --threads auto "
                   f">= 1.5x the default: {_ok(n['ratio'] >= 1.5)} ({n['ratio']:.2f}x)"
                   + ("" if n["model"] == "ViT-B-32" and n["neighbours"] == 1
                      else " [the target is stated for ViT-B-32 and one neighbour]"))
    else:
        out.append(f"neighbour: not run ({_HOW['neighbour']})")
    return [x for x in out if x]
