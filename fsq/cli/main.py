"""Entry point: the one place that maps exceptions to exit codes (STYLE.md #1, #3).

Exit codes: 0 ok, 1 other failure, 2 usage/configuration, 3 external service, 4 integrity.
"""

from __future__ import annotations

import sqlite3
import sys

import click

from fsq import __version__
from fsq.cli.common import Exit, publish_witness, set_command
from fsq.errors import FsqError
from fsq.ledger.audit import _context as audit_context
from fsq.secrets import mask_secrets

EPILOG = """\b
Quick start:
  fsq init                                   # state DB + vault key pair
  fsq scan --all --dry-run --source file:///srv/lemmy/volumes/pictrs/files
  fsq flagged                                # review what would be quarantined
  fsq apply                                  # quarantine it (no re-classification)
Settings: flag > FSQ_* env > .env > defaults (see `fsq config show`)."""


def _traceback() -> None:
    """--debug: the traceback on stderr, through the one masking function (exception
    messages and local reprs can carry a URL or a passphrase)."""
    import traceback
    click.echo(mask_secrets(traceback.format_exc()).rstrip(), err=True)


class FsqGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return self._invoke(ctx)
        finally:
            publish_witness()

    def _invoke(self, ctx: click.Context):
        debug = "--debug" in sys.argv[1:]
        audit_context.pop("appended", None)
        try:
            return super().invoke(ctx)
        except Exit as e:
            ctx.exit(e.code)
        except FsqError as e:
            if debug:
                _traceback()
            click.echo(mask_secrets(f"fsq: error: {e.message}"), err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("fsq: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.ClickException, click.Abort):
            raise
        except sqlite3.DatabaseError as e:
            # Corruption met mid-command (a page quick_check at open did not reach, or damage
            # since): an integrity failure of the state database, not a bug in fsq.
            if not _is_corruption(e):
                raise_or_internal(ctx, e, debug)
            if debug:
                _traceback()
            what = ' '.join(str(e).split())
            click.echo(f"fsq: error: the state database is damaged ({what}); stop fsq, keep the "
                       "file, restore the last backup (docs/operations.md)", err=True)
            ctx.exit(4)
        except Exception as e:  # a bug: say so, hide the traceback unless --debug
            raise_or_internal(ctx, e, debug)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list with each description's whole first sentence, wrapped (click's
        default cuts it to the terminal width with "...")."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(self, ctx, args):
        name, cmd, rest = super().resolve_command(ctx, args)
        if name:
            set_command(name)
        return name, cmd, rest


def raise_or_internal(ctx: click.Context, e: Exception, debug: bool) -> None:
    """A bug: one masked line (and with --debug the masked traceback), exit 1."""
    if debug:
        _traceback()
    click.echo(mask_secrets(f"fsq: internal error: {e.__class__.__name__}: {e} "
                            "(rerun with --debug for a traceback and report it)"), err=True)
    ctx.exit(1)


def _is_corruption(e: sqlite3.DatabaseError) -> bool:
    from fsq.ledger.db import is_corruption as corrupt
    return type(e) is sqlite3.DatabaseError or corrupt(e)


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
    "fsq.cli.lemmy_cmd",
    "fsq.cli.review_cmd",
    "fsq.cli.custody_cmd",
    "fsq.cli.attest_cmd",
    "fsq.cli.peers_cmd",
    "fsq.cli.import_cmd",
    "fsq.cli.hashes_cmd",
    "fsq.cli.rescore_cmd",
    "fsq.cli.model_cmd",
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
