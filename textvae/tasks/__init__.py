"""Tasks: what the one training loop runs. Importing this package registers every task.

A task (:class:`~textvae.training.task.Task`) supplies the data, the model, its evaluation and its
report for one kind of run; ``sentences`` (sentence VAEs and the LSTM language model) and
``dialogue`` (the conditional VAE of responses given contexts) are registered. A recipe names its
task (``task: dialogue``; ``sentences`` when it names none) and the task's ``config_class`` reads it
(:mod:`textvae.tasks.runconfig`).
"""
from textvae.tasks import dialogue, sentences
from textvae.tasks.base import TASKS, create_task, list_tasks, register_task, run_training

__all__ = ["TASKS", "create_task", "dialogue", "list_tasks", "register_task", "run_training", "sentences"]
