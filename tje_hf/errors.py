"""Every error tje_hf raises for a user's input, in one torch-free module.

Each is a one-line message that names the field, file or value at fault and what to change; the
``tje`` command prints it as ``tje: error: ...`` with exit code 2, never a traceback. The modules
that raise them re-export them where they were first defined.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the field."""


class ModelLoadError(RuntimeError):
    """The model or tokenizer cannot be loaded as specified; the message says what to change."""


class InsufficientMemoryError(ModelLoadError, MemoryError):
    """The model and the run's KV cache do not fit the memory available; the one-line message
    names the numbers and what to change. A :class:`ModelLoadError` (so ``tje`` prints it as an
    error, not a traceback) and a :class:`MemoryError`."""


class FamilyError(ValueError):
    """The tokenizer lacks a token its family needs, or the family name is unknown."""


class PromptTooLongError(ValueError):
    """A prompt does not fit in the model's context window."""


class TaskError(ValueError):
    """A task cannot be built: unknown name, missing file, column or config; the message says which."""


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (e.g. it holds a run with another config)."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelLoadError, FamilyError, PromptTooLongError,
                                            TaskError, RunDirError)
