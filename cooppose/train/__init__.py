"""Training of the three networks: losses, one step function per kind, and the shared loop."""

from cooppose.train.loop import TrainResult, load_train_config, resolve_train_config, train
from cooppose.train.steps import STEPS, resolve_loss_config

__all__ = ["STEPS", "TrainResult", "load_train_config", "resolve_loss_config", "resolve_train_config", "train"]
