"""Properties of the pure wave scheduler, over every size, cap and order of endings hypothesis can find."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kas.waves.scheduler import CANCELLED, PENDING, RUNNING, TERMINAL, WaveScheduler


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, bool]], int | None]:
    """A wave size, a cap, a sequence of (which running task ends, ok?) picks, and maybe a fail-fast stop."""
    size = draw(st.integers(1, 12))
    cap = draw(st.integers(0, 6))
    picks = draw(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=size, max_size=3 * size))
    stop_at = draw(st.none() | st.integers(0, size))
    return size, cap, picks, stop_at


@given(runs())
def test_cap_is_never_exceeded_promotion_follows_plan_order_and_every_task_ends(run) -> None:  # type: ignore[no-untyped-def]
    size, cap, picks, stop_at = run
    order = [f"T{i}" for i in range(size)]
    sched = WaveScheduler(order, cap)
    promoted = sched.start()
    limit = size if cap == 0 else cap
    assert promoted == order[: min(limit, size)]
    for step, (pick, ok) in enumerate(picks):
        if stop_at == step:
            cancelled = sched.stop_promoting()
            assert all(sched.state[t] == CANCELLED for t in cancelled)
        running = sched.running()
        if not running:
            break
        new = sched.finish(running[pick % len(running)], ok)
        promoted += new
        assert len(sched.running()) <= limit  # the cap
    # Plan order: what was promoted is a prefix of the plan, in order, with nothing skipped.
    assert promoted == order[: len(promoted)]
    # Drain: end whatever still runs; then every task is terminal and the wave is finished.
    while sched.running():
        sched.finish(sched.running()[0], True)
    if sched.promoting:
        assert not any(s == PENDING for s in sched.state.values())
    else:
        assert all(s in TERMINAL for s in sched.state.values())
    assert sched.finished == all(s in TERMINAL for s in sched.state.values())
    assert RUNNING not in sched.state.values()
