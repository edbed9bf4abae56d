"""The durable queue: order, idempotent puts, acks, dead events, caps and their policies."""

from __future__ import annotations

from pathlib import Path

import pytest

from visage.edge.queue import EventQueue, FullPolicy, QueueFull, QueueLimits


def test_fifo_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with EventQueue(path) as queue:
        for i in range(5):
            assert queue.put(f"k{i}", b"x" * (i + 1))
        assert not queue.put("k0", b"other")  # same key: already queued, unchanged
        assert [e.key for e in queue.batch(limit=3)] == ["k0", "k1", "k2"]
        assert queue.ack(["k0", "k1"]) == 2
        queue.attempted(["k2"])
    with EventQueue(path) as queue:  # a new process would see the same
        batch = queue.batch()
        assert [e.key for e in batch] == ["k2", "k3", "k4"]
        assert batch[0].attempts == 1 and batch[0].payload == b"xxx"
        stats = queue.stats()
        assert (stats.pending, stats.delivered, stats.bytes) == (3, 2, 3 + 4 + 5)


def test_batches_respect_the_byte_budget(tmp_path: Path) -> None:
    with EventQueue(tmp_path / "q.db") as queue:
        for i in range(4):
            queue.put(f"k{i}", b"x" * 400)
        assert len(queue.batch(max_bytes=1000)) == 2
        assert len(queue.batch(max_bytes=10)) == 1  # always at least one


def test_drop_oldest_when_full(tmp_path: Path) -> None:
    limits = QueueLimits(max_events=3, max_bytes=1000, policy=FullPolicy.DROP_OLDEST)
    with EventQueue(tmp_path / "q.db", limits) as queue:
        for i in range(5):
            queue.put(f"k{i}", b"x" * 10)
        assert [e.key for e in queue.batch()] == ["k2", "k3", "k4"]
        queue.put("big", b"y" * 985)  # the byte cap drops as many as it needs
        assert [e.key for e in queue.batch()] == ["k4", "big"]
        assert queue.stats().dropped == 4


def test_refuse_new_when_full(tmp_path: Path) -> None:
    limits = QueueLimits(max_events=2, policy=FullPolicy.REFUSE_NEW)
    with EventQueue(tmp_path / "q.db", limits) as queue:
        queue.put("a", b"1")
        queue.put("b", b"2")
        with pytest.raises(QueueFull, match="refuse-new"):
            queue.put("c", b"3")
        assert [e.key for e in queue.batch()] == ["a", "b"]
        assert queue.stats().refused == 1


def test_dead_events_are_kept_aside(tmp_path: Path) -> None:
    with EventQueue(tmp_path / "q.db") as queue:
        queue.put("a", b"1")
        queue.put("b", b"2")
        queue.bury("a", "malformed")
        assert [e.key for e in queue.batch()] == ["b"]
        assert queue.dead() == [("a", "malformed")]
        assert queue.stats().dead == 1
        assert queue.purge_dead() == 1 and queue.stats().dead == 0
