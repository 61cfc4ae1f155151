"""Switchboard's application layer: what assembles the packages below it.

`registry` (adapters, bases, experiments) <- `router` <- `serving`, and `registry` <- `trainer`;
this package sits above them all: the command line (`cli`), the one reader of the
environment (`settings`), base-model acquisition (`bases`, `pypi`), the demo and its data
(`demo`, `demo_data`) and the forgetting report (`forgetting`). See docs/architecture.md.
"""
