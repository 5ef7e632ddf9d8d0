"""The retention rule as a pure function: tables of cases with an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fsq.custody.retention import (HoldFacts, IncidentFacts, active_holds, display_state,
                                   eligibility, hold_active, retention_end, retention_start)

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def inc(state="cleared", *, q=-400, r=None, c=-1, p=None, rel=None) -> IncidentFacts:
    """An incident with times given as days relative to NOW (None = not set)."""
    at = (lambda d: None if d is None else NOW + d * DAY)
    return IncidentFacts(id=7, state=state, quarantined_at=at(q), reported_at=at(r),
                         cleared_at=at(c), purged_at=at(p), released_at=at(rel))


def hold(hid=3, kind="litigation", *, until=None, lifted=None) -> HoldFacts:
    at = (lambda d: None if d is None else NOW + d * DAY)
    return HoldFacts(id=hid, kind=kind, reason="r", until=at(until), lifted_at=at(lifted))


# (case, incident, holds, retention_days, eligible, reasons)
CASES = [
    ("no clearance",
     inc("quarantined", c=None), [], 365, False, ["no clearance"]),
    ("no clearance, inside retention",
     inc("reported", q=-10, r=-5, c=None), [], 365, False,
     ["no clearance", "retention until 2028-05-26 12:00 UTC"]),  # 2028 is a leap year
    ("cleared but inside retention",
     inc(q=-100), [], 365, False, ["retention until 2028-02-21 12:00 UTC"]),
    ("cleared, past retention, no hold",
     inc(q=-400), [], 365, True, None),
    ("cleared, past retention, hold active",
     inc(q=-400), [hold()], 365, False, ["hold 3 (litigation) active"]),
    ("cleared, past retention, hold active with a future until",
     inc(q=-400), [hold(until=+30)], 365, False,
     ["hold 3 (litigation) active until 2027-07-01 12:00 UTC"]),
    ("hold expired by its until",
     inc(q=-400), [hold(until=-1)], 365, True, None),
    ("hold until exactly now has expired",
     inc(q=-400), [hold(until=0)], 365, True, None),
    ("hold lifted",
     inc(q=-400), [hold(lifted=-2)], 365, True, None),
    ("one hold lifted, another active",
     inc(q=-400), [hold(1, "voluntary", lifted=-2), hold(2, "law-enforcement")], 365, False,
     ["hold 2 (law-enforcement) active"]),
    ("reported later than quarantine: clock starts at the report",
     inc("cleared", q=-400, r=-300), [], 365, False, ["retention until 2027-08-05 12:00 UTC"]),
    ("reported long ago: past retention from the report",
     inc("cleared", q=-10, r=-366), [], 365, True, None),
    ("never reported: clock starts at quarantine",
     inc("cleared", q=-366, r=None), [], 365, True, None),
    ("retention 0: eligible at once",
     inc("cleared", q=0, c=0), [], 0, True, None),
    ("retention 0 still needs clearance",
     inc("quarantined", q=0, c=None), [], 0, False, ["no clearance"]),
    ("retention 0 still respects holds",
     inc("cleared", q=0, c=0), [hold(5, "statutory")], 0, False, ["hold 5 (statutory) active"]),
    ("every obstacle at once",
     inc("reported", q=-5, r=-1, c=None), [hold(4, "voluntary")], 365, False,
     ["no clearance", "retention until 2028-05-30 12:00 UTC", "hold 4 (voluntary) active"]),
    ("just before the retention end",
     inc(q=-365 + 1 / 86400), [], 365, False, ["retention until 2027-06-01 12:00 UTC"]),
    ("exactly at the retention end",
     inc(q=-365), [], 365, True, None),
    ("clearance older than the quarantine does not count",
     inc(q=-400, c=-500), [], 365, False, ["clearance predates the quarantine; clear it again"]),
    ("already purged",
     inc("purged", p=-1), [], 0, False, ["already purged"]),
    ("released",
     inc("released", rel=-1), [], 0, False, ["released (false positive): no evidence kept"]),
    ("flagged, never quarantined",
     inc("flagged", q=None), [], 0, False, ["not quarantined: nothing in the vault"]),
    ("purge in progress",
     inc("purging"), [], 0, False, ["purge in progress: the next purge run finishes it"]),
]


@pytest.mark.parametrize("case,facts,holds,days,eligible,reasons", CASES,
                         ids=[c[0] for c in CASES])
def test_eligibility_table(case, facts, holds, days, eligible, reasons):
    el = eligibility(facts, holds, days, NOW)
    assert el.eligible is eligible, el.reasons
    if reasons is not None:
        assert el.reasons == reasons
    else:
        assert el.reasons[-1] == "no active hold" and el.reasons[0].startswith("cleared ")
    assert el.blocking_holds == active_holds(holds, NOW)


def test_retention_start_and_end():
    f = inc(q=-10, r=-3)
    assert retention_start(f) == NOW - 3 * DAY
    assert retention_end(f, 365) == NOW - 3 * DAY + 365 * DAY
    assert retention_end(f, 0) == NOW - 3 * DAY
    g = inc(q=-10, r=None)
    assert retention_start(g) == NOW - 10 * DAY
    assert retention_end(inc("flagged", q=None, r=None), 365) is None
    with pytest.raises(ValueError):
        retention_end(f, -1)


HOLD_CASES = [
    ("open-ended", hold(), True),
    ("until in the future", hold(until=+1), True),
    ("until in the past", hold(until=-1), False),
    ("until now", hold(until=0), False),
    ("lifted", hold(lifted=-1), False),
    ("lifted, until in the future", hold(until=+10, lifted=-1), False),
    ("lift time in the future (clock skew) not yet in effect", hold(lifted=+1), True),
]


@pytest.mark.parametrize("case,h,active", HOLD_CASES, ids=[c[0] for c in HOLD_CASES])
def test_hold_active_table(case, h, active):
    assert hold_active(h, NOW) is active
    assert (active_holds([h], NOW) == [h]) is active


# (case, incident, holds, display state)
STATE_CASES = [
    ("flagged", inc("flagged", q=None, c=None), [], "flagged"),
    ("quarantined", inc("quarantined", c=None), [], "quarantined"),
    ("reported", inc("reported", r=-1, c=None), [], "reported"),
    ("cleared", inc("cleared"), [], "cleared"),
    ("cleared and reported", inc("cleared", r=-2), [], "cleared"),
    ("held wins over cleared", inc("cleared"), [hold()], "held"),
    ("held wins over reported", inc("reported", r=-1, c=None), [hold(until=+5)], "held"),
    ("expired hold: not held", inc("quarantined", c=None), [hold(until=-5)], "quarantined"),
    ("lifted hold: not held", inc("cleared"), [hold(lifted=-1)], "cleared"),
    ("held before quarantine", inc("flagged", q=None, c=None), [hold()], "held"),
    ("purging", inc("purging"), [hold()], "purging"),
    ("purged", inc("purged", p=-1), [], "purged"),
    ("released", inc("released", rel=-1, c=None), [], "released"),
]


@pytest.mark.parametrize("case,facts,holds,expected", STATE_CASES,
                         ids=[c[0] for c in STATE_CASES])
def test_display_state_table(case, facts, holds, expected):
    assert display_state(facts, holds, NOW) == expected


def test_facts_from_rows():
    row = {"id": 4, "state": "reported", "quarantined_at": "2027-01-01T00:00:00.000000Z",
           "reported_at": "2027-01-02T10:00:00Z", "cleared_at": None, "purged_at": None,
           "released_at": ""}
    f = IncidentFacts.from_row(row)
    assert f.reported_at == datetime(2027, 1, 2, 10, tzinfo=timezone.utc)
    assert f.released_at is None and f.cleared_at is None
    h = HoldFacts.from_row({"id": 1, "kind": "voluntary", "reason": "x",
                            "until": "2027-02-01T23:59:59.999999Z", "lifted_at": None})
    assert h.until is not None and h.until.tzinfo is not None and h.lifted_at is None
