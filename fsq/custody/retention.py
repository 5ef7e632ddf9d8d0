"""Legal hold and purge rules as pure functions (STYLE.md #5): plain data in, answers out.

Nothing here touches the database, the vault or the clock: callers pass ``now``. That keeps the
one rule that decides whether evidence may be destroyed small enough to read in one sitting and
testable with tables of cases (tests/test_retention.py).

Why the rule looks like this (background, not legal advice; see README and
/work/shared/reference/legal-and-evidence.md, and ask local counsel):

* US 18 U.S.C. 2258A(h), as amended by the REPORT Act (2024): a completed CyberTipline report is
  a request to preserve the reported material for one year. Hence ``FSQ_RETENTION_DAYS``
  defaults to 365 and the clock starts when the incident is *marked reported*; an incident that
  was never reported keeps its evidence for the same period counted from quarantine.
* Government preservation requests (18 U.S.C. 2703(f)), litigation holds and voluntary
  extensions can require keeping it longer: any *active hold* blocks purge, whatever the
  retention says. A hold with an ``until`` time expires at that instant; a lifted hold is over.
* Destruction is a human decision: a person must *clear* the incident. Clearance alone destroys
  nothing; the purge happens once retention has run out and no hold is active.
* 18 U.S.C. 2258B: the material must be destroyed when law enforcement asks. That path
  (``fsq purge --incident ID --destruction-request REF``) bypasses retention and clearance but
  not holds - a conflicting hold must be lifted explicitly, with a reason, first.

Times are timezone-aware UTC datetimes. "Past retention" means ``now >= retention_end``, so
``FSQ_RETENTION_DAYS=0`` makes an incident eligible as soon as it is quarantined and cleared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from fsq.timeutil import parse_iso

HOLD_KINDS = ("statutory", "voluntary", "law-enforcement", "litigation")

#: Incident states (the ``incidents.state`` column) that still have evidence in the vault.
EVIDENCE_STATES = ("quarantined", "reported", "cleared")

#: Everything ``display_state`` can answer.
DISPLAY_STATES = ("flagged", "quarantined", "reported", "held", "cleared", "purging", "purged",
                  "released")


@dataclass(frozen=True)
class IncidentFacts:
    """What the rule needs to know about one incident."""

    id: int
    state: str                           # incidents.state (flagged, quarantined, ..., purging)
    quarantined_at: datetime | None = None
    reported_at: datetime | None = None
    cleared_at: datetime | None = None
    purged_at: datetime | None = None
    released_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "IncidentFacts":
        """From an ``incidents`` row (ISO 8601 text times)."""
        return cls(id=int(row["id"]), state=str(row["state"]),
                   quarantined_at=_t(row["quarantined_at"]), reported_at=_t(row["reported_at"]),
                   cleared_at=_t(row["cleared_at"]), purged_at=_t(row["purged_at"]),
                   released_at=_t(row["released_at"]))


@dataclass(frozen=True)
class HoldFacts:
    """One hold on an incident."""

    id: int
    kind: str
    reason: str = ""
    until: datetime | None = None        # the hold ends at this instant; None = until lifted
    lifted_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "HoldFacts":
        """From a ``holds`` row."""
        return cls(id=int(row["id"]), kind=str(row["kind"]), reason=str(row["reason"]),
                   until=_t(row["until"]), lifted_at=_t(row["lifted_at"]))

    def label(self) -> str:
        return f"hold {self.id} ({self.kind})"


@dataclass(frozen=True)
class Eligibility:
    """The answer for one incident. ``reasons`` say why it may go, or every reason it stays."""

    eligible: bool
    reasons: list[str]
    retention_end: datetime | None
    blocking_holds: list[HoldFacts] = field(default_factory=list)


def _t(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return parse_iso(str(value))


def fmt_time(dt: datetime) -> str:
    """Human form used in reasons: ``2027-11-21 19:38 UTC``."""
    return dt.strftime("%Y-%m-%d %H:%M UTC")


def retention_start(facts: IncidentFacts) -> datetime | None:
    """When the retention clock started: the report time, else the quarantine time, else None
    (never quarantined: nothing is retained)."""
    if facts.reported_at is not None:
        return facts.reported_at
    return facts.quarantined_at


def retention_end(facts: IncidentFacts, retention_days: int) -> datetime | None:
    """When retention runs out (None if the clock never started)."""
    if retention_days < 0:
        raise ValueError("retention_days must be >= 0")
    start = retention_start(facts)
    return None if start is None else start + timedelta(days=retention_days)


def hold_active(hold: HoldFacts, now: datetime) -> bool:
    """Active unless lifted, or its ``until`` has passed (``until <= now``)."""
    if hold.lifted_at is not None and hold.lifted_at <= now:
        return False
    if hold.until is not None and hold.until <= now:
        return False
    return True


def active_holds(holds: Iterable[HoldFacts], now: datetime) -> list[HoldFacts]:
    return [h for h in holds if hold_active(h, now)]


def _hold_reason(h: HoldFacts) -> str:
    return f"{h.label()} active" + (f" until {fmt_time(h.until)}" if h.until else "")


def eligibility(facts: IncidentFacts, holds: Iterable[HoldFacts], retention_days: int,
                now: datetime) -> Eligibility:
    """May this incident's evidence be purged now (after clearance)?

    Eligible exactly when: it holds evidence (quarantined, reported or cleared), a person
    cleared it after it was quarantined, retention has run out, and no hold is active.
    Otherwise ``reasons`` lists every obstacle, e.g. ``["no clearance", "retention until
    2027-11-21 19:38 UTC", "hold 3 (litigation) active"]``.
    """
    end = retention_end(facts, retention_days)
    blocking = active_holds(holds, now)
    if facts.state == "purged":
        return Eligibility(False, ["already purged"], end, blocking)
    if facts.state == "released":
        return Eligibility(False, ["released (false positive): no evidence kept"], end, blocking)
    if facts.state == "purging":
        return Eligibility(False, ["purge in progress: the next purge run finishes it"], end,
                           blocking)
    if facts.state not in EVIDENCE_STATES or facts.quarantined_at is None:
        return Eligibility(False, ["not quarantined: nothing in the vault"], end, blocking)
    reasons: list[str] = []
    if facts.cleared_at is None:
        reasons.append("no clearance")
    elif facts.cleared_at < facts.quarantined_at:
        # A clearance can only be about evidence that existed when it was given.
        reasons.append("clearance predates the quarantine; clear it again")
    if end is None or now < end:
        reasons.append(f"retention until {fmt_time(end)}" if end else "retention not started")
    reasons.extend(_hold_reason(h) for h in blocking)
    if reasons:
        return Eligibility(False, reasons, end, blocking)
    assert facts.cleared_at is not None and end is not None
    return Eligibility(True, [f"cleared {fmt_time(facts.cleared_at)}",
                              f"retention ended {fmt_time(end)}", "no active hold"], end, [])


def display_state(facts: IncidentFacts, holds: Iterable[HoldFacts], now: datetime) -> str:
    """The state a person should see: flagged, quarantined, reported, held, cleared, purging,
    purged or released. ``held`` (any active hold) wins over cleared and reported, because it
    is what decides that nothing will be destroyed."""
    if facts.state in ("purged", "released", "purging"):
        return facts.state
    if active_holds(holds, now):
        return "held"
    if facts.state == "flagged" or facts.quarantined_at is None:
        return "flagged"
    if facts.cleared_at is not None:
        return "cleared"
    if facts.reported_at is not None:
        return "reported"
    return "quarantined"
