"""The Monitor's reading schedule, written out as the rule itself, for tests that expect readings.

An instrument of period ``p`` is read at update 1 (a baseline) and then at every multiple of
``p`` (``trainlab.instruments.Monitor``): over updates ``first..last`` that is the list below.
"""


def due(period: int, last: int, first: int = 1) -> list[int]:
    """The updates in ``first..last`` at which an instrument read every ``period`` updates is read."""
    return [s for s in range(first, last + 1) if s == 1 or s % period == 0]
