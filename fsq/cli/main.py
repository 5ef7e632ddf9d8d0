"""Entry point: the one place that maps exceptions to exit codes (STYLE.md #1, #3).

Exit codes: 0 ok, 1 other failure, 2 usage/configuration, 3 external service, 4 integrity.
"""

from __future__ import annotations

import sys

import click

from fsq import __version__
from fsq.cli.common import Exit, set_command
from fsq.errors import FsqError

EPILOG = """\b
Quick start:
  fsq init                                   # state DB + vault key pair
  fsq scan --all --dry-run --source file:///srv/lemmy/volumes/pictrs/files
  fsq flagged                                # review what would be quarantined
  fsq apply                                  # quarantine it (no re-classification)
Settings: flag > FSQ_* env > .env > defaults (see `fsq config show`)."""


class FsqGroup(click.Group):
    def invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv[1:]
        try:
            return super().invoke(ctx)
        except Exit as e:
            ctx.exit(e.code)
        except FsqError as e:
            if debug:
                raise
            click.echo(f"fsq: error: {e.message}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("fsq: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug: say so, hide the traceback unless --debug
            if debug:
                raise
            click.echo(f"fsq: internal error: {e.__class__.__name__}: {e} "
                       "(rerun with --debug for a traceback and report it)", err=True)
            ctx.exit(1)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        if name:
            set_command(name)
        return name, cmd, rest


@click.group(cls=FsqGroup, epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fsq")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """fsq: quarantine-first evidence retention for pict-rs / Lemmy image stores.

    Finds likely abuse material with CLIP, seals it into an encrypted quarantine instead of
    deleting it, keeps a tamper-evident audit log, writes incident reports, and destroys
    evidence only after retention and clearance. Not legal advice: see README.
    """


# One line per command module; each module exposes COMMANDS (a list of click commands).
COMMAND_MODULES = [
    "fsq.cli.init_cmd",
    "fsq.cli.scan_cmd",
    "fsq.cli.flagged_cmd",
    "fsq.cli.config_cmd",
    "fsq.cli.demo_cmd",
    "fsq.cli.quarantine_cmd",
    "fsq.cli.incidents_cmd",
    "fsq.cli.audit_cmd",
    "fsq.cli.hold_cmd",
    "fsq.cli.clear_cmd",
    "fsq.cli.purge_cmd",
    "fsq.cli.serve_cmd",
    "fsq.cli.report_cmd",
    "fsq.cli.hashes_cmd",
]


def _register() -> None:
    import importlib
    for name in COMMAND_MODULES:
        for c in importlib.import_module(name).COMMANDS:
            cli.add_command(c)


_register()


def main() -> None:
    cli.main(prog_name="fsq")


if __name__ == "__main__":  # pragma: no cover
    main()
