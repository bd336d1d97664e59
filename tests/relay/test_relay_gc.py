"""The relay keeps the cyclic collector's pauses short (relay/cli.py ``quiet_gc``)."""

from __future__ import annotations

import gc

from relay.cli import GC_THRESHOLDS, quiet_gc


def test_quiet_gc_freezes_what_is_loaded_and_collects_young_objects_less_often() -> None:
    before = gc.get_threshold()
    try:
        quiet_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # the modules and tables loaded so far
        assert gc.isenabled()  # cyclic garbage is still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
