"""The review console: a person looks at what fsq caught, safely, and decides.

Core first (usable without HTTP): ``queue`` (listing incidents to review, paginated through
indexes), ``previews`` (decrypt in memory -> a blurred, grayscale, small rendering, stepping up
one level at a time; every preview served is an ``evidence.viewed`` audit event),
``decisions`` (the one adapter between the console and the incident lifecycle functions),
``export`` (the evidence package for a CyberTipline report) and ``session`` (one-time login
token, session cookie, CSRF token, idle lock). ``app`` puts Starlette on top; ``server`` runs
it under uvicorn. See docs/review.md for the threat model.
"""
