"""`vharm benchmark`'s measurements that could silently lie (its numbers themselves are not unit-tested)."""

from __future__ import annotations

import numpy as np

from vharm.benchmark import peak_rss_mb


def test_peak_rss_is_the_child_own_not_the_parent_it_forked_from():
    ballast = np.ones((300, 1024, 1024), np.uint8)  # 300 MB resident in this (parent) process
    peak = peak_rss_mb(["--help"])
    assert 0 < peak < 250, peak  # wait4's ru_maxrss would report > 300 here
    assert ballast.sum() == ballast.size
