"""The project's user-input errors: the CLI prints their message, without a traceback, and exits
with status 2. Any other exception is a bug and keeps its traceback."""

from __future__ import annotations


class UserInputError(ValueError):
    """A value, file or image the user gave cannot be used; the message names it and the fix."""


class TrainingDataError(UserInputError):
    """The data left nothing, or too little, to train on: no pair kept in an epoch, or more
    unusable images than ``data.max_bad_fraction`` allows. The run stops; no adapter is written."""
