"""Errors a user can act on. Each message names the file, architecture or key that is wrong."""


class RemoeError(Exception):
    """Base class for every error Remoe raises on purpose."""


class CheckpointError(RemoeError):
    """A checkpoint directory is missing, incomplete or corrupt."""


class UnsupportedArchitectureError(RemoeError):
    """The model's architecture does not route its experts through transformers' experts interface."""


class MissingWeightError(CheckpointError):
    """A tensor the model needs is not in the checkpoint."""


class ExpertBudgetError(RemoeError):
    """An expert cannot fit in the memory budget it was given."""
