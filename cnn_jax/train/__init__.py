"""Training: the train state and pure steps (`step`), optimizers and schedules (`optim`),
and the epoch loop (`loop`)."""

from cnn_jax.train.loop import evaluate, train_and_evaluate
from cnn_jax.train.optim import make_optimizer, make_schedule
from cnn_jax.train.step import (TrainState, create_train_state, cross_entropy, eval_step,
                                train_step)

__all__ = ["TrainState", "create_train_state", "cross_entropy", "train_step", "eval_step",
           "make_optimizer", "make_schedule", "train_and_evaluate", "evaluate"]
