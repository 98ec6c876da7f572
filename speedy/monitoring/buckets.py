# -*- test-case-name: speedy.test.test_monitoring -*-
"""
A histogram kept as plain numbers where it is observed (no lock: the
reactor thread alone observes), turned into a Prometheus family when
scraped.
"""

from bisect import bisect_left

from prometheus_client.core import HistogramMetricFamily

#: Upper bounds for durations of disk syncs, in seconds.
SYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5)

#: Upper bounds for counts of things handled together (a group commit's writes).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Buckets:
    """Counts of observations at or below each bound, their sum and count."""

    def __init__(self, bounds):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self):
        return sum(self.counts)

    def cumulative(self):
        """@return: the C{(upper bound, observations at or below it)} pairs
        of a Prometheus histogram, C{+Inf} last."""
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, self.counts):
            cumulative += count
            buckets.append((repr(float(bound)), cumulative))
        buckets.append(("+Inf", cumulative + self.counts[-1]))
        return buckets

    def family(self, name, documentation):
        """@return: a L{HistogramMetricFamily} of the observations so far."""
        return HistogramMetricFamily(name, documentation, buckets=self.cumulative(),
                                     sum_value=self.sum)
