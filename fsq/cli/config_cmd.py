"""`fsq config show`: effective settings, secrets masked."""

from __future__ import annotations

import click

from fsq.cli.common import echo_json, json_option, load
from fsq.config import SETTINGS


@click.group("config")
def config() -> None:
    """Inspect settings (flag > FSQ_* env > .env > defaults).

    \b
    Example:
      fsq config show --json
    """


@config.command("show")
@json_option
def show(as_json):
    """Print every effective setting with where it came from; secrets are masked.

    \b
    Example:
      FSQ_SEVERITY=strict fsq config show
    """
    settings = load()
    masked = settings.masked()
    if as_json:
        echo_json({s.env: {"value": masked[s.env], "origin": settings.origin(s.name)}
                   for s in SETTINGS})
        return
    width = max(len(s.env) for s in SETTINGS)
    for s in SETTINGS:
        v = masked[s.env]
        shown = "(unset)" if v is None or v == [] else (",".join(v) if isinstance(v, list)
                                                         else str(v))
        click.echo(f"{s.env.ljust(width)}  {shown}  [{settings.origin(s.name)}]")


COMMANDS = [config]
