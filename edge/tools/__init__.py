"""Operator tools around the daemon: `inspectd bench`, `demo`, `check`, `view`, `config`, and what they share.

Kept apart from the runtime so the daemon's path (everything else in edge/) reads alone: the runtime never imports
this package, and tools may import anything in edge/ (the demo also drives the offline commands, as subprocesses).
"""
