"""Running jobs from several threads at once, for the tests of what the library promises there."""

from __future__ import annotations

import threading
import time
from typing import Callable


def run_together(seconds: float, jobs: dict[str, tuple[Callable[[int], object], int]]) -> dict[str, int]:
    """Run each job ``name: (call, threads)`` in that many threads (``call(i)``, ``i`` the thread's
    index), each calling it again and again for ``seconds`` or until any call raises anywhere.
    Returns how many calls of each job finished; fails the test if a call raised (a job's own
    checks raise ``AssertionError``) or a thread still runs two minutes after the end."""
    deadline = time.monotonic() + seconds
    errors: list[str] = []
    counts = dict.fromkeys(jobs, 0)
    lock = threading.Lock()

    def loop(name: str, call: Callable[[int], object], i: int) -> None:
        while time.monotonic() < deadline and not errors:
            try:
                call(i)
            except Exception as e:  # collected for the assertion below
                errors.append(f"{name}: {type(e).__name__}: {e}")
                return
            with lock:
                counts[name] += 1

    threads = [
        threading.Thread(target=loop, args=(name, call, i)) for name, (call, n) in jobs.items() for i in range(n)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread still runs"
    assert not errors, "\n".join(errors)  # a helper module: pytest does not rewrite its asserts
    return counts


def error_within(seconds: float, call: Callable[[], object], what: str) -> BaseException | None:
    """What ``call()`` raised (``None`` if it returned), run in a daemon thread; fails the test,
    naming ``what``, if it still runs after ``seconds`` (a call that blocks forever, on a FIFO say,
    is left behind in its daemon thread)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as e:  # returned to the caller, who names it
            outcome.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout=seconds)
    assert outcome, f"{what} still blocks after {seconds} s"
    return outcome[0]
