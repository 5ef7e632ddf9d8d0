"""Shared verdicts between instances: signed attestations, peers, trust policy.

One instance signs statements about content it reviewed ("this sha256 is safe / unsafe,
decided by a person") and publishes them over plain HTTP; another instance pins that
instance's key, pulls the statements, verifies each one and, by its own policy, lets them
skip the model (safe) or put the content in front of a reviewer first (unsafe).

    dsse.py          DSSE v1 envelopes and in-toto Statement v1 (pure: build, sign, verify)
    signing_key.py   the instance's Ed25519 signing key (passphrase-protected file)
    publish.py       local human decisions -> signed statements -> the published feed
    peers.py         trusted peers: add, remove, pull (bounded HTTP), import, verification
    trust.py         the scanner's policy check (a peer statement -> a verdict, or nothing)
    http.py          the /.well-known/fsq/ routes (Starlette), mountable by any server

Nothing published ever names a storage key, a pict-rs alias, Lemmy data or image bytes:
only content digests, the verdict and how it was reached (docs/federation.md).
"""
