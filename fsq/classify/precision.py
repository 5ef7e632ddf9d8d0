"""Pick the device and the numeric precision for CLIP inference.

Why this exists: most admins run fsq on a CPU, and the right precision there depends on the
silicon. bf16 halves memory traffic and is fast on CPUs with native bf16 matrix units (Intel AMX,
AVX-512 BF16), but without them torch emulates it: measured on an AVX2-only AMD EPYC, a bf16
1024x1024 matmul took 2.25 s against 0.013 s in fp32. So "auto" chooses bf16 only when the CPU
says it has the hardware, fp16 on CUDA, and fp32 otherwise.

Weights are converted with ``model.to(dtype)``; ``torch.autocast`` on CPU was measured far slower
than converted weights, so it is not used.
"""

from __future__ import annotations

from fsq.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_cpu_bf16() -> tuple[bool, bool, str]:
    """(has AMX, has AVX-512 BF16, torch's capability string) as torch itself sees them.

    These helpers are private torch API, so each is guarded; missing ones count as "no".
    """
    amx = avx512_bf16 = False
    capability = "unknown"
    try:
        import torch
    except ImportError:
        return amx, avx512_bf16, capability
    backends_cpu = getattr(getattr(torch, "backends", None), "cpu", None)
    if backends_cpu is not None and hasattr(backends_cpu, "get_cpu_capability"):
        try:
            capability = str(backends_cpu.get_cpu_capability())
        except Exception:  # pragma: no cover - defensive against private API changes
            pass
    for mod in (getattr(torch, "cpu", None), getattr(getattr(torch, "_C", None), "_cpu", None)):
        if mod is None:
            continue
        for name, which in (("_is_amx_tile_supported", "amx"),
                            ("_is_avx512_bf16_supported", "avx512_bf16")):
            fn = getattr(mod, name, None)
            if fn is None:
                continue
            try:
                ok = bool(fn())
            except Exception:  # pragma: no cover
                ok = False
            if which == "amx":
                amx = amx or ok
            else:
                avx512_bf16 = avx512_bf16 or ok
    return amx, avx512_bf16, capability


def detect_precision(device: str) -> tuple[str, str]:
    """The precision "auto" means on ``device``, and a human-readable reason."""
    if device.startswith("cuda"):
        return "fp16", "CUDA device: fp16 halves memory and runs on tensor cores"
    flags = _cpu_flags()
    t_amx, t_bf16, capability = _torch_cpu_bf16()
    if "amx_bf16" in flags or t_amx:
        return "bf16", "CPU has AMX (amx_bf16): native bf16 matrix units"
    if "avx512_bf16" in flags or t_bf16:
        return "bf16", "CPU has AVX-512 BF16: native bf16 dot products"
    return "fp32", (f"CPU has neither AMX nor AVX-512 BF16 (torch CPU capability: {capability}); "
                    f"bf16 would be emulated and many times slower than fp32")


def resolve_device(setting: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; explicit values are checked."""
    import torch

    s = (setting or "auto").strip().lower()
    if s == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if s == "cpu":
        return "cpu"
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {setting!r}: torch sees no CUDA GPU here "
                              f"(use --device cpu or auto)")
        if ":" in s:
            try:
                idx = int(s.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"device {setting!r}: expected cuda:N") from None
            if not 0 <= idx < torch.cuda.device_count():
                raise ConfigError(f"device {setting!r}: no such GPU "
                                  f"({torch.cuda.device_count()} visible)")
        return s
    raise ConfigError(f"device {setting!r}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(setting: str, device: str) -> tuple[str, str]:
    """Turn the precision setting into a concrete precision plus the reason for it."""
    s = (setting or "auto").strip().lower()
    if s not in PRECISIONS:
        raise ConfigError(f"precision {setting!r}: expected one of {', '.join(PRECISIONS)}")
    if s == "auto":
        return detect_precision(device)
    if s == "fp16" and not device.startswith("cuda"):
        raise ConfigError("precision 'fp16' needs a CUDA device; on CPU use fp32 or bf16")
    if s == "bf16" and not device.startswith("cuda"):
        auto, _ = detect_precision(device)
        if auto != "bf16":
            return "bf16", ("bf16 requested, but this CPU has no native bf16 support: "
                            "expect it to be much slower than fp32")
    return s, f"{s} requested"
