"""The weekly training task, run by a worker on the ``training`` queue."""

from __future__ import annotations

from celery import Task, shared_task

from mdf.celery_app import TRAIN, app_settings
from training.config import TrainConfig
from training.run import train_and_evaluate


@shared_task(bind=True, name=TRAIN, acks_late=False)
def train(self: Task) -> dict[str, object]:
    """Fine-tune, evaluate and maybe promote; acknowledged at once, as a retried run would
    duplicate hours of work (the next week's schedule runs it again anyway)."""
    settings = app_settings(self.app)
    path = settings.train_config
    config = TrainConfig.from_file(path) if path else TrainConfig()
    result = train_and_evaluate(config, settings)
    return {"run_id": result.run_id, "version": result.version, "promoted": result.promoted}
