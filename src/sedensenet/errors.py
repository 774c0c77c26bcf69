"""The one base class of errors a user can act on.

The CLI prints such an error's message and exits with status 2 (or the error's ``exit_code``), without a
traceback: the message names the problem and what to change. Any other exception is a bug and is shown with its
traceback under ``-v``. Subclasses keep their standard base too (``ValueError``, ``OSError`` ...), so callers that
catch those still do.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, files or machine, with a message that says what to do about it."""


class DeviceError(UserError, RuntimeError):
    """A device that was asked for and is not available here (no CUDA GPU, too few GPUs, no Apple MPS)."""


class MissingDependencyError(UserError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""
