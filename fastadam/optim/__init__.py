"""The NumPy façade optimizers (torch.optim's names and defaults)."""

from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .base import Optimizer
from .nadam import NAdam
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "Adam", "AdamW", "RMSprop", "Adagrad", "SGD", "Adadelta", "NAdam",
           "Adamax"]
