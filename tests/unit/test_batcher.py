"""The scoring thread's dynamic batching: rows cap, wait, order, failures, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import threading

import pytest

from distillery.serving.batcher import ThreadBatcher


class Recorder:
    """A score function that records each batch (its requests) and can be held mid-batch."""

    def __init__(self, fail_on: str | None = None):
        self.batches: list[list[list[str]]] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items):
        self.entered.set()
        self.gate.wait(5)
        self.threads.add(threading.current_thread().name)
        self.batches.append(items)
        if self.fail_on is not None and any(self.fail_on in item for item in items):
            raise ValueError(f"cannot score {self.fail_on}")
        return [[x.upper() for x in item] for item in items]


def test_each_request_gets_its_own_results_from_one_thread():
    score = Recorder()
    batcher = ThreadBatcher(score, max_rows=64, name="ort-test")

    async def main():
        return await asyncio.gather(*(batcher.submit([f"r{i}a", f"r{i}b"]) for i in range(20)))

    out = asyncio.run(main())
    batcher.close()
    assert out == [[f"R{i}A", f"R{i}B"] for i in range(20)]
    assert score.threads == {"ort-test"}  # never the event loop's thread
    assert sum(len(b) for b in score.batches) == 20 and batcher.batches == len(score.batches)


def test_requests_queued_while_a_batch_runs_fill_the_next_batch_up_to_max_rows():
    score = Recorder()
    score.gate.clear()  # hold the first batch while 10 more requests queue
    batcher = ThreadBatcher(score, max_rows=8)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.to_thread(score.entered.wait, 5)
        rest = [asyncio.ensure_future(batcher.submit([f"b{i}", f"c{i}", f"d{i}"])) for i in range(4)]  # 3 rows each
        await asyncio.sleep(0.05)
        score.gate.set()
        return await asyncio.gather(first, *rest)

    out = asyncio.run(main())
    batcher.close()
    assert out[0] == ["A"] and out[1:] == [[f"B{i}", f"C{i}", f"D{i}"] for i in range(4)]
    sizes = [sum(len(item) for item in b) for b in score.batches]
    assert sizes == [1, 6, 6]  # 3 + 3 fit 8 rows; a third request (9) waits for the next batch
    assert all(s <= 8 for s in sizes)


def test_a_request_larger_than_max_rows_is_scored_alone():
    score = Recorder()
    batcher = ThreadBatcher(score, max_rows=2)
    out = asyncio.run(batcher.submit(["a", "b", "c"]))
    batcher.close()
    assert out == ["A", "B", "C"] and score.batches == [[["a", "b", "c"]]]


def test_wait_s_gathers_requests_that_arrive_after_the_first():
    score = Recorder()
    batcher = ThreadBatcher(score, max_rows=64, wait_s=0.2)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.02)  # well inside the 200 ms wait
        return await asyncio.gather(first, batcher.submit(["b"]))

    assert asyncio.run(main()) == [["A"], ["B"]]
    batcher.close()
    assert score.batches == [[["a"], ["b"]]]


def test_no_wait_scores_a_lone_request_at_once():
    score = Recorder()
    batcher = ThreadBatcher(score, max_rows=64, wait_s=0.0)

    async def main():
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.05)  # a second request soon after does not join the first's batch
        return await asyncio.gather(first, batcher.submit(["b"]))

    assert asyncio.run(main()) == [["A"], ["B"]]
    batcher.close()
    assert score.batches == [[["a"]], [["b"]]]  # not held for company


def test_a_failing_batch_fails_its_requests_and_the_thread_goes_on():
    score = Recorder(fail_on="bad")
    score.gate.clear()
    batcher = ThreadBatcher(score, max_rows=64)

    async def main():
        blocker = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.to_thread(score.entered.wait, 5)
        good, bad = asyncio.ensure_future(batcher.submit(["ok"])), asyncio.ensure_future(batcher.submit(["bad"]))
        await asyncio.sleep(0.05)
        score.gate.set()
        results = await asyncio.gather(blocker, good, bad, return_exceptions=True)
        return results, await batcher.submit(["after"])

    (blocker, good, bad), after = asyncio.run(main())
    batcher.close()
    assert blocker == ["X"]
    assert isinstance(good, ValueError) and isinstance(bad, ValueError)  # one batch: the score function's error
    assert "cannot score bad" in str(bad)
    assert after == ["AFTER"] and batcher.alive is False


def test_a_wrong_number_of_results_is_an_error_not_a_misassignment():
    gate, entered = threading.Event(), threading.Event()

    def one_result(items):
        entered.set()
        gate.wait(5)
        return [1]

    batcher = ThreadBatcher(one_result, max_rows=64)

    async def main():
        blocker = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.to_thread(entered.wait, 5)
        pair = [asyncio.ensure_future(batcher.submit([k])) for k in ("a", "b")]  # queue into one batch
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(blocker, *pair, return_exceptions=True)

    blocker, a, b = asyncio.run(main())
    batcher.close()
    assert blocker == 1  # one request, one result
    for r in (a, b):  # two requests, one result: nobody gets another's answer
        assert isinstance(r, RuntimeError) and "1 results for 2 requests" in str(r)


def test_a_cancelled_request_still_queued_is_dropped_before_scoring():
    score = Recorder()
    score.gate.clear()
    batcher = ThreadBatcher(score, max_rows=64)

    async def main():
        blocker = asyncio.ensure_future(batcher.submit(["x"]))
        await asyncio.to_thread(score.entered.wait, 5)
        gone = asyncio.ensure_future(batcher.submit(["gone"]))
        kept = asyncio.ensure_future(batcher.submit(["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # a bid past its deadline
        await asyncio.sleep(0.01)
        score.gate.set()
        return await asyncio.gather(blocker, kept)

    assert asyncio.run(main()) == [["X"], ["KEPT"]]
    batcher.close()
    assert [["x"]] in score.batches and [["kept"]] in score.batches
    assert all(["gone"] not in b for b in score.batches) and batcher.dropped == 1


def test_close_stops_the_thread_and_refuses_new_work():
    batcher = ThreadBatcher(Recorder(), max_rows=4)
    assert batcher.alive
    batcher.close()
    batcher._thread.join(5)
    assert not batcher.alive
    with pytest.raises(RuntimeError, match="scoring thread is stopped"):
        asyncio.run(batcher.submit(["a"]))


@pytest.mark.parametrize("kwargs, message", [({"max_rows": 0}, "max_rows=0"), ({"max_rows": 4, "wait_s": -1}, "wait_s=-1")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThreadBatcher(Recorder(), **kwargs)


def test_on_batch_reports_each_batch_on_the_event_loop_and_a_failing_hook_is_harmless(caplog):
    seen, loop_thread = [], []

    def hook(rows, queued_s, score_s):
        seen.append((rows, queued_s, score_s, threading.current_thread().name))
        raise RuntimeError("metrics down")

    batcher = ThreadBatcher(Recorder(), max_rows=64, on_batch=hook)

    async def main():
        loop_thread.append(threading.current_thread().name)
        first = await batcher.submit(["a", "b"])
        return first, await batcher.submit(["c"])

    assert asyncio.run(main()) == (["A", "B"], ["C"])  # the hook's error reached no request
    batcher.close()
    assert [s[0] for s in seen] == [2, 1]
    assert all(s[1] >= 0 and s[2] >= 0 for s in seen) and {s[3] for s in seen} == set(loop_thread)
    assert sum("on_batch hook failed" in r.message for r in caplog.records) == 1  # logged once
