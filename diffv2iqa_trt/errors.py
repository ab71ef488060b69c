"""The toolkit's exceptions: one base, one subclass per boundary.

Every failure the toolkit expects (a bad option, a bad file, a missing package) is a `DiffV2IQAError`; the CLI turns
exactly these into a message and an exit code. Anything else that escapes is a bug and is shown as one (traceback).
Subclasses also derive from ValueError or RuntimeError where callers may reasonably catch those.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

# Exit codes of the CLI (also documented in the README).
EXIT_FAILED = 1  # the work ran but some of it failed (an image, a gate, a build check)
EXIT_USAGE = 2  # nothing ran: an option, input file or environment is wrong


class DiffV2IQAError(Exception):
    """An expected failure with a message that says what was wrong and what to do."""

    exit_code = EXIT_USAGE


class ConfigError(DiffV2IQAError, ValueError):
    """An option or configuration value that cannot work (unknown preset, impossible step count, ...)."""


class CheckpointError(DiffV2IQAError, ValueError):
    """A checkpoint that cannot be loaded: wrong format, keys or shapes."""


class BundleError(DiffV2IQAError, ValueError):
    """A bundle or manifest that cannot be used; the message names the file and says what to do.

    `path` is the offending file (or directory) when there is one; `problems` lists every problem found, so a caller
    can show them one per line.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None,
                 problems: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.problems = tuple(problems)


class ImageDecodeError(DiffV2IQAError, ValueError):
    """A file that is missing, unreadable or not an image (reported per image; the others are still scored)."""

    exit_code = EXIT_FAILED

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class BackendError(DiffV2IQAError, RuntimeError):
    """A backend that is unknown or cannot run here (package missing, no GPU, no such provider)."""


class ExportError(DiffV2IQAError, RuntimeError):
    """An exported graph that does not satisfy the contract or the ONNX checker."""

    exit_code = EXIT_FAILED


class BuildError(DiffV2IQAError, RuntimeError):
    """The build cannot produce a bundle that is safe to deploy (lint failure, parity check)."""

    exit_code = EXIT_FAILED


class DependencyError(DiffV2IQAError, RuntimeError):
    """An optional package that this command needs is not installed; the message says what to install."""
