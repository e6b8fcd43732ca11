"""Exceptions of tubeflow.

Every error caused by input data names *where* (a file, or a video and frame) and *what*
is wrong, so a user of a thousand-video job can find the one bad file. The CLI catches
:class:`TubeflowError` and prints its message instead of a traceback.
"""
from __future__ import annotations


class TubeflowError(Exception):
    """Base class of every error tubeflow raises on purpose.

    ``exit_code`` is what the CLI exits with when the error ends a command (documented in
    pipelines/README.md): 1 the command ran and some work failed, 2 the command cannot run as
    given (its options, config, weights or inputs are unusable), 75 the output is busy."""

    exit_code = 1


class InputError(TubeflowError):
    """Input data (a file, a frame, a JSON record) is unreadable or inconsistent.

    ``where`` names the file (or ``video … frame …``), ``problem`` says what is wrong.
    Per-video input errors become failure rows; one that ends the command means the command
    could not run on its inputs as given (exit code 2).
    """

    exit_code = 2

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def __reduce__(self):  # keep the two fields through pickling (Ray ships errors)
        return (type(self), (self.where, self.problem))


class CorruptFileError(InputError):
    """A file cannot be decoded (corrupt PNG, truncated video, invalid JSON)."""


class FormatMismatchError(InputError):
    """A file decodes but disagrees with its metadata or with the other inputs
    (segments_info vs PNG ids, unknown category, frame of the wrong size)."""
