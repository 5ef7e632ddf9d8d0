"""Previews of sealed evidence, made in memory: decrypt -> decode -> shrink/blur/grey -> PNG.

Decrypted bytes never touch the disk: the sealed entry is read from the vault, opened with the
private key held by the console, decoded by Pillow from a BytesIO and re-encoded to a PNG in a
BytesIO. Nothing is cached; every preview is made again and audited again.

Levels (one step per click, enforced by the HTTP layer's per-session ceiling):

====== ========= ============ ========= ===================================================
level  max side  colour       blur      counts as
====== ========= ============ ========= ===================================================
0      128 px    grayscale    strong    a view of a blurred preview (``blurred: true``)
1      256 px    grayscale    light     a view of the file
2      512 px    colour       none      a view of the file
3      full size colour       none      a view of the file (capped at 4096 px per side)
====== ========= ============ ========= ===================================================

``FSQ_REVIEW_BLUR=false`` removes the blur and ``FSQ_REVIEW_GRAYSCALE=false`` the grey; then the
level-0 preview is no longer a blurred one and is audited as a view of the file. Animations
show a strip of their sampled frames (the whole strip within the level's size). Files the
decoder cannot read (videos today) have no preview; the decryption is still audited.

Sealed evidence is hostile input too (a file quarantined as unreadable may be a decode bomb).
The console therefore decodes through a ``DecodePool`` (``decoder`` below): the same worker
processes, pixel budget and CPU budget (FSQ_DECODE_SECONDS, then SIGKILL) as the scan, so a
preview can cost a worker its budget but never stall or grow the console process. Only the
pure ``render_preview`` without a decoder (tests) decodes in this process.

This module is the one place the review console imports the decoder.
"""

from __future__ import annotations

import io
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image, ImageFilter

from fsq.media import DecodeRequest, Unreadable, decode  # the ONE decoder import of fsq.review
from fsq.errors import FsqError
from fsq.ledger import audit
from fsq.quarantine.release import decrypt_entry

MAX_LEVEL = 3
FULL_SIZE_CAP = 4096


@dataclass(frozen=True)
class Level:
    level: int
    max_side: int
    grayscale: bool
    blur_radius: float      # Gaussian radius in output pixels; 0 = none


LEVELS = (Level(0, 128, True, 6.0), Level(1, 256, True, 2.0), Level(2, 512, False, 0.0),
          Level(3, FULL_SIZE_CAP, False, 0.0))
LEVEL_NAMES = ("blurred, grayscale, 128 px", "less blur, grayscale, 256 px",
               "colour, 512 px", "full size, colour")


class PreviewUnavailable(FsqError):
    """The evidence exists but cannot be shown (undecodable, no sealed copy)."""
    exit_code = 1


@dataclass(frozen=True)
class Preview:
    png: bytes
    level: int
    blurred: bool           # True only for a blurred level-0 rendering
    width: int
    height: int
    frames: int
    media_type: str


def effective(level: int, *, blur: bool = True, grayscale: bool = True) -> Level:
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"preview level must be 0..{MAX_LEVEL}")
    lv = LEVELS[level]
    return Level(lv.level, lv.max_side, lv.grayscale and grayscale,
                 lv.blur_radius if blur else 0.0)


def is_blurred_view(level: int, *, blur: bool = True) -> bool:
    """Whether serving ``level`` counts as a view of a blurred preview (not of the file)."""
    return level == 0 and blur


#: ``decoder(data, request)``: ``DecodePool.decode`` in the console.
Decoder = Callable[[bytes, DecodeRequest], Any]


def render_preview(data: bytes, level: int, *, blur: bool = True, grayscale: bool = True,
                   max_pixels: int = 64_000_000, budget_pixels: int = 1_000_000_000,
                   decoder: Decoder | None = None) -> Preview:
    """Bytes in, PNG out (raises ``Unreadable`` for what the decoder cannot read, including a
    file stopped at its decode budget). Without ``decoder`` it decodes in this process."""
    lv = effective(level, blur=blur, grayscale=grayscale)
    req = DecodeRequest(max_pixels=max_pixels, budget_pixels=budget_pixels, fit=lv.max_side,
                        max_frames=4)
    d = decoder(data, req) if decoder is not None else decode(data, req)
    mode = "L" if lv.grayscale else "RGB"
    frames = [fr.convert(mode) for fr in d.frames]
    gap = 4 if len(frames) > 1 else 0
    w = sum(f.width for f in frames) + gap * (len(frames) - 1)
    h = max(f.height for f in frames)
    strip = Image.new(mode, (w, h), 255 if mode == "L" else (255, 255, 255))
    x = 0
    for f in frames:
        strip.paste(f, (x, 0))
        x += f.width + gap
    # The whole rendering (a still, or the strip of an animation's frames) fits the level's
    # size, so a level-0 preview is never more than 128 px on either side. Blur comes last,
    # so its strength is relative to what is shown.
    if strip.width > lv.max_side or strip.height > lv.max_side:
        strip.thumbnail((lv.max_side, lv.max_side), Image.Resampling.LANCZOS)
    if lv.blur_radius:
        strip = strip.filter(ImageFilter.GaussianBlur(lv.blur_radius))
    buf = io.BytesIO()
    strip.save(buf, "PNG", optimize=False)
    return Preview(buf.getvalue(), level, is_blurred_view(level, blur=blur) and
                   lv.blur_radius > 0, strip.width, strip.height, len(frames), d.media_type)


def live_entry(conn: sqlite3.Connection, incident_id: int) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM vault_entries WHERE incident_id=? AND state='done' "
                        "ORDER BY created_at, id LIMIT 1", (incident_id,)).fetchone()


def serve_preview(conn: sqlite3.Connection, incident: sqlite3.Row, level: int, *,
                  private_key: Any, vault_for: Callable[[str], Any], reviewer: str,
                  blur: bool = True, grayscale: bool = True,
                  max_pixels: int = 64_000_000, budget_pixels: int = 1_000_000_000,
                  decoder: Decoder | None = None) -> Preview:
    """Decrypt one sealed copy, render ``level`` and append ``evidence.viewed``.

    The event is appended after rendering and before the caller sends a byte, so every preview
    a person receives is in the log, and a failed decryption logs no view that never happened.
    A file that cannot be rendered logs ``evidence.viewed`` with ``rendered: false`` (it was
    decrypted, nothing was shown)."""
    effective(level)  # validate before touching the vault
    iid = int(incident["id"])
    entry = live_entry(conn, iid)
    if entry is None:
        raise PreviewUnavailable(f"incident {iid} has no sealed copy in the vault (state "
                                 f"{incident['state']}); nothing to preview")
    _, content = decrypt_entry(vault_for(entry["vault"]), entry, private_key)
    base = {"incident": iid, "reviewer": reviewer, "level": level, "entry": entry["id"]}
    try:
        p = render_preview(content, level, blur=blur, grayscale=grayscale,
                           max_pixels=max_pixels, budget_pixels=budget_pixels,
                           decoder=decoder)
    except Unreadable as exc:
        audit.append(conn, "evidence.viewed", f"incident:{iid}",
                     {**base, "blurred": True, "rendered": False, "why": exc.reason[:200]})
        raise PreviewUnavailable(f"no preview for incident {iid}: {exc.reason}") from None
    finally:
        del content
    audit.append(conn, "evidence.viewed", f"incident:{iid}",
                 {**base, "blurred": p.blurred, "rendered": True, "frames": p.frames,
                  "width": p.width, "height": p.height})
    return p


def views(conn: sqlite3.Connection, incident_id: int) -> list[dict[str, Any]]:
    """Every ``evidence.viewed`` event of an incident, oldest first."""
    import json
    out = []
    for ev in audit.events(conn, subject=f"incident:{incident_id}",
                           action_prefix="evidence.viewed"):
        try:
            det = json.loads(ev["details"])
        except ValueError:
            det = {}
        out.append({"seq": ev["seq"], "ts": ev["ts"], "actor": ev["actor"],
                    "reviewer": det.get("reviewer"), "level": det.get("level"),
                    "blurred": bool(det.get("blurred", True)),
                    "rendered": det.get("rendered", True) is not False})
    return out
