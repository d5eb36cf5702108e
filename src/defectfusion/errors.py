"""User-facing errors.

Anything a user can cause (a bad file, a wrong field, a missing model) raises a subclass of
:class:`DefectFusionError` whose message says what was expected, what was found and how to fix
it. The CLI prints that message on one line and exits non-zero; it never shows a traceback for
these.
"""

from __future__ import annotations


class DefectFusionError(Exception):
    """Base class for errors caused by user input, files or environment."""


class ConfigError(DefectFusionError):
    """A configuration file or override is invalid."""


class DataError(DefectFusionError):
    """A dataset, annotation file or image is invalid."""


class CheckpointError(DefectFusionError):
    """A checkpoint cannot be read or does not match the model."""


class TextEncoderUnavailable(DefectFusionError):
    """A text encoder cannot be loaded here (e.g. offline without a local copy)."""


class TrainingInterrupted(DefectFusionError):
    """Training stopped on a signal after saving its state (the message says how to resume)."""
