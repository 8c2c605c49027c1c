"""The hub's own histogram against prometheus_client's: the same exposition."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram

from dprl.stats import DIAL_BUCKETS, Buckets


def test_buckets_expose_what_a_prometheus_histogram_does() -> None:
    ours = Buckets("dprl_test_seconds", "A test histogram.", DIAL_BUCKETS)
    theirs = Histogram("dprl_test_seconds", "A test histogram.", buckets=DIAL_BUCKETS, registry=CollectorRegistry())
    rng = random.Random(7)
    values = [rng.expovariate(50) for _ in range(1000)] + list(DIAL_BUCKETS) + [0.0, 60.0]
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    [mine], [reference] = ours.collect(), theirs.collect()
    assert (mine.name, mine.type, mine.documentation) == (reference.name, reference.type, reference.documentation)

    def samples(metric):  # _created differs by when each was made
        return [(s.name, s.labels, round(s.value, 9)) for s in metric.samples if not s.name.endswith("_created")]

    assert samples(mine) == samples(reference)
    assert [s.name for s in mine.samples if s.name.endswith("_created")] == ["dprl_test_seconds_created"]
