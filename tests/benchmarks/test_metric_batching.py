"""A cell's epoch metrics reach the store in batches, and never later than its checkpoint or its
end: per-epoch calls cost more than the default suite's short epochs."""

from __future__ import annotations

from growbench.benchmarks import tracking
from growbench.benchmarks.tracking import CellTracker, CheckpointPolicy


class RecordingClient:
    """The MlflowClient calls a CellTracker makes, recorded."""

    lost = None  # the store answers

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.calls: list[str] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.batches.append(list(metrics))
        self.calls.append("log_batch")

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append(name)


def steps(batch) -> list[int]:
    return sorted({metric.step for metric in batch})


def test_epoch_metrics_wait_for_the_flush_interval_and_all_arrive_at_the_end(monkeypatch):
    monkeypatch.setattr(tracking, "METRIC_FLUSH_SECONDS", 3600.0)
    client = RecordingClient()
    cell = CellTracker(client, "run")
    for epoch in range(20):
        cell.epoch_done(epoch, {"train_loss": 1.0 / (epoch + 1), "test_loss": 2.0})
    assert client.batches == []
    cell.kill()
    assert len(client.batches) == 1
    assert steps(client.batches[0]) == list(range(20))
    assert len(client.batches[0]) == 40
    assert client.calls[-2:] == ["log_batch", "set_terminated"]


def test_a_zero_interval_sends_every_epoch_at_once(monkeypatch):
    monkeypatch.setattr(tracking, "METRIC_FLUSH_SECONDS", 0.0)
    client = RecordingClient()
    cell = CellTracker(client, "run")
    for epoch in range(3):
        cell.epoch_done(epoch, {"train_loss": 1.0})
    assert [steps(batch) for batch in client.batches] == [[0], [1], [2]]
    cell.kill()


def test_a_checkpoint_is_saved_after_the_metrics_it_covers(monkeypatch):
    monkeypatch.setattr(tracking, "METRIC_FLUSH_SECONDS", 3600.0)
    client = RecordingClient()
    cell = CellTracker(client, "run", checkpoints=CheckpointPolicy(every=1, min_seconds=0))
    cell.epoch_done(0, {"train_loss": 1.0})
    cell.epoch_done(1, {"train_loss": 0.5})
    cell.checkpoint(1, False, lambda: {"epoch": 1})
    first_artifact = client.calls.index("log_artifact")
    assert client.calls[:first_artifact] == ["log_batch"]
    assert steps(client.batches[0]) == [0, 1]
    cell.kill()
