"""docs/federation.md's example envelope is a real one: it verifies against the documented
key, and its payload is the statement shown next to it."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from fsq.exchange import dsse

DOC = Path(__file__).resolve().parents[1] / "docs" / "federation.md"


def test_documented_envelope_verifies_with_documented_key():
    text = DOC.read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    envelope, statement, keys = (json.loads(b) for b in blocks[:3])
    (key,) = keys["keys"]
    pub = dsse.public_key_from_b64(key["public_key"])
    assert dsse.keyid(pub) == key["keyid"] == envelope["signatures"][0]["keyid"]
    st = dsse.verify(envelope, pub)
    assert json.loads(base64.b64decode(envelope["payload"])) == statement
    assert st.verdict == statement["predicate"]["verdict"]
