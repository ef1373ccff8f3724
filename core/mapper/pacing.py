"""When the mapper's next flush runs: the batching window, without I/O (the clock is passed in).

A flush sends what the changes gathered since the last one mean to every affected stream, one
message per stream. Its cost grows with the streams it reaches (about 20 us each: at 10,000
nodes a flush costs about 0.2 s however many changes it carries), so under a steady stream of
changes the number of flushes per second, not the number of changes, sets the CPU. Two rules,
and a quiet server still delivers in the same event-loop turn:

- **Storm**: flushes closer than ``storm_gap`` that carried ``storm_changes`` or more changes
  (nodes coming online by the hundred) make the next one gather for ``storm_delay``.
- **Busy**: when the last flush carried more than one change (changes come faster than
  flushes go out) and either took (at ``busy_cost`` or more) over ``busy_share`` of the time
  since the one before it ended, or had itself waited for a window, the next flush waits
  until ``ratio`` times the last one's cost has passed since it ended, at most ``max_delay``.
  Flushing then takes about 1 / (1 + ratio) of the loop's time, and the cost per second stops
  growing with the change rate: at 10,000 nodes, 0.2 s of flushing then 0.4 s of gathering,
  whether 2 or 20 changes came meanwhile. Otherwise a change is not held back: a quiet server,
  changes that leave the loop mostly free (a join is two changes in one turn), or one change
  at a time however busy (the fan-out benchmark waits for each change to arrive everywhere
  before the next) gain nothing from it.
"""

from __future__ import annotations

from dataclasses import dataclass

STORM_GAP = 0.02  # flushes closer than this, each carrying many changes, mean a storm...
STORM_CHANGES = 8
STORM_DELAY = 0.05  # ...and the next one gathers changes for this long
RATIO = 2.0  # gather for twice what the last flush took: flushing is at most a third of the loop
MAX_DELAY = 0.4  # a change waits at most this long for its flush (plus the flush before it)
MIN_DELAY = 0.001  # shorter waits are not worth a timer: deliver in this turn
BUSY_SHARE = 0.5  # pacing starts once flushing took more than half the time...
BUSY_COST = 0.02  # ...in flushes this costly (cheaper ones: the storm rule is enough)


@dataclass
class FlushPacer:
    """Remembers the last flush; says how long changes arriving now wait for theirs."""

    ratio: float = RATIO
    max_delay: float = MAX_DELAY
    storm_gap: float = STORM_GAP
    storm_changes: int = STORM_CHANGES
    storm_delay: float = STORM_DELAY
    busy_share: float = BUSY_SHARE
    busy_cost: float = BUSY_COST
    prev_end: float = float("-inf")  # the flush before the last one ended
    last_start: float = float("-inf")
    last_end: float = float("-inf")
    last_changes: int = 0
    last_waited: bool = False  # the last flush ran after a window

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the flush of a change arriving now (0: this turn)."""
        if not self.last_changes:
            return 0.0  # no flush yet
        wait = 0.0
        if now - self.last_start < self.storm_gap and self.last_changes >= self.storm_changes:
            wait = self.storm_delay
        cost = self.last_end - self.last_start
        share = cost / max(self.last_end - self.prev_end, 1e-9)  # since the one before
        if self.last_changes > 1 and (
                self.last_waited or (cost >= self.busy_cost and share > self.busy_share)):
            due = self.last_end + min(self.max_delay, self.ratio * cost)
            wait = max(wait, due - now)
        wait = min(wait, self.max_delay)
        return wait if wait >= MIN_DELAY else 0.0

    def flushed(self, start: float, end: float, changes: int, waited: bool = False) -> None:
        """A flush ran from ``start`` to ``end`` carrying ``changes`` node changes;
        ``waited``: it ran after a window (delay() said more than 0)."""
        if changes == 0:
            return  # nothing was sent: no cost to pace by
        self.prev_end = self.last_end
        self.last_start, self.last_end, self.last_changes = start, end, changes
        self.last_waited = waited
