"""daemon.readiness with a fake clock: no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.readiness import StabilityTracker


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tracker(clock: FakeClock) -> StabilityTracker:
    return StabilityTracker(5.0, clock=clock)


def test_stable_only_after_settle(tracker: StabilityTracker, clock: FakeClock) -> None:
    assert tracker.observe("a", 10, 111) is False
    clock.advance(4.9)
    assert tracker.observe("a", 10, 111) is False
    clock.advance(0.1)
    assert tracker.observe("a", 10, 111) is True
    clock.advance(100)
    assert tracker.observe("a", 10, 111) is True


def test_a_tag_is_compared_but_never_restarts_the_window(
    tracker: StabilityTracker, clock: FakeClock
) -> None:
    """The caller's tag (intake: inode, mode, link count) tells a replaced file
    from the same one; only size and mtime make it settle again."""
    assert tracker.unchanged("a", 10, 111, tag=1) is False  # never seen
    assert tracker.mtime_ns("a") is None
    tracker.observe("a", 10, 111, tag=1)
    assert tracker.unchanged("a", 10, 111, tag=1) is True
    assert tracker.unchanged("a", 10, 111, tag=2) is False
    assert tracker.unchanged("a", 10, 112, tag=1) is False
    clock.advance(4)
    assert tracker.observe("a", 10, 111, tag=2) is False
    assert tracker.unchanged("a", 10, 111, tag=2) is True
    assert tracker.settled_at("a") == pytest.approx(1005.0)  # the window stands
    assert tracker.mtime_ns("a") == 111
    clock.advance(1)
    assert tracker.observe("a", 10, 111, tag=2) is True


def test_size_change_restarts_window(tracker: StabilityTracker, clock: FakeClock) -> None:
    tracker.observe("a", 10, 111)
    clock.advance(4)
    assert tracker.observe("a", 20, 111) is False  # grew
    clock.advance(4)
    assert tracker.observe("a", 20, 111) is False  # 4 s since the change, not 8
    clock.advance(1)
    assert tracker.observe("a", 20, 111) is True


def test_mtime_change_restarts_window(tracker: StabilityTracker, clock: FakeClock) -> None:
    tracker.observe("a", 10, 111)
    clock.advance(6)
    assert tracker.observe("a", 10, 222) is False  # rewritten in place, same size
    clock.advance(5)
    assert tracker.observe("a", 10, 222) is True


def test_change_back_to_old_values_still_restarts(
    tracker: StabilityTracker, clock: FakeClock
) -> None:
    tracker.observe("a", 10, 111)
    clock.advance(3)
    tracker.observe("a", 11, 112)
    clock.advance(3)
    assert tracker.observe("a", 10, 111) is False  # changed again: a new window
    clock.advance(5)
    assert tracker.observe("a", 10, 111) is True


def test_not_observing_does_not_restart(tracker: StabilityTracker, clock: FakeClock) -> None:
    tracker.observe("a", 10, 111)
    clock.advance(60)  # no scans in between
    assert tracker.observe("a", 10, 111) is True


def test_waiting_counts_from_first_seen_across_changes(
    tracker: StabilityTracker, clock: FakeClock
) -> None:
    tracker.observe("a", 1, 1)
    clock.advance(3)
    tracker.observe("a", 2, 2)  # a change restarts the settle window, not the wait
    assert tracker.settled_at("a") == 1003.0 + 5.0
    clock.advance(2)
    assert tracker.waited("a") == pytest.approx(5.0)


def test_waited_unknown_is_zero(tracker: StabilityTracker) -> None:
    assert tracker.waited("nope") == 0.0


def test_forget_resets(tracker: StabilityTracker, clock: FakeClock) -> None:
    tracker.observe("a", 1, 1)
    clock.advance(10)
    assert tracker.observe("a", 1, 1) is True
    tracker.forget("a")
    tracker.forget("never-seen")  # harmless
    assert tracker.settled_at("a") is None and tracker.waited("a") == 0.0
    assert tracker.observe("a", 1, 1) is False  # starts over
    assert tracker.waited("a") == 0.0


def test_keys_are_independent(tracker: StabilityTracker, clock: FakeClock) -> None:
    tracker.observe("a", 1, 1)
    clock.advance(3)
    tracker.observe("b", 1, 1)
    clock.advance(2)
    assert tracker.observe("a", 1, 1) is True
    assert tracker.observe("b", 1, 1) is False
    tracker.forget("a")
    clock.advance(3)
    assert tracker.observe("b", 1, 1) is True  # forgetting one leaves the other
    assert tracker.observe("a", 1, 1) is False


def test_zero_settle_is_ready_at_once(clock: FakeClock) -> None:
    t = StabilityTracker(0, clock=clock)
    assert t.observe("a", 1, 1) is True
    assert t.observe("a", 2, 1) is True


def test_negative_settle_rejected() -> None:
    with pytest.raises(ValueError):
        StabilityTracker(-1)


def test_default_clock_is_monotonic() -> None:
    t = StabilityTracker(3600)
    assert t.observe("a", 1, 1) is False
    assert 0 <= t.waited("a") < 60


@given(
    st.lists(
        st.tuples(
            st.floats(0, 10, allow_nan=False),
            st.integers(0, 2),
            st.integers(0, 2),
        ),
        max_size=40,
    )
)
def test_ready_iff_unchanged_for_settle(steps: list[tuple[float, int, int]]) -> None:
    """Against a direct model: ready iff now - (time of last change) >= settle."""
    clock = FakeClock(0.0)
    t = StabilityTracker(5.0, clock=clock)
    last: tuple[int, int] | None = None
    changed_at = 0.0
    for dt, size, mtime in steps:
        clock.advance(dt)
        if (size, mtime) != last:
            last, changed_at = (size, mtime), clock.now
        assert t.observe("k", size, mtime) is (clock.now - changed_at >= 5.0)
        assert t.waited("k") == pytest.approx(clock.now - steps[0][0])
