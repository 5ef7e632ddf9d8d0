"""Incident lifecycle: incidents, holds, retention rules (pure), clearances, custodian
signatures and audit witnesses."""
