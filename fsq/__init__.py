"""fsq: quarantine-first evidence retention for pict-rs / Lemmy image stores."""

__version__ = "0.1.0"
