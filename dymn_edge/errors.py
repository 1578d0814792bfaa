"""Project exceptions.

Every error a user can cause derives from :class:`DymnEdgeError`; the command-line tools
catch it and print its message as one line (tracebacks only with ``--verbose``).
"""

from __future__ import annotations


class DymnEdgeError(Exception):
    """Base class for errors that are the user's input, not a bug."""


class UnknownModelError(DymnEdgeError, KeyError):
    """A model name that the registry does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(DymnEdgeError):
    """Weights that cannot be found, downloaded, read or matched to the architecture."""


class AudioError(DymnEdgeError):
    """Audio that cannot be read or holds no usable signal."""


class LabelsError(DymnEdgeError):
    """A labels file that is malformed or disagrees with the model."""


class MetadataError(DymnEdgeError):
    """A model file without (or with unusable) dymn-edge metadata."""


class ExportError(DymnEdgeError):
    """An export that cannot be done with the requested options."""


class ValidationError(DymnEdgeError):
    """An exported file whose outputs disagree with the PyTorch reference."""


class EngineError(DymnEdgeError):
    """An inference engine that is missing or cannot run the model file."""


class DeviceError(DymnEdgeError):
    """An audio input device that is missing, vanished or cannot be opened as asked."""


def one_line(exc: BaseException | None, limit: int = 300, *, with_type: bool = False) -> str:
    """An exception as one short line, for the one-line errors the tools print.

    The first non-empty line of its message, whitespace collapsed and cut at ``limit``
    characters (converters and engines raise messages of hundreds of lines whose first line
    says what failed); the type name when the message is empty, or before it with
    ``with_type``.
    """
    if exc is None:
        return "unknown error"
    lines = [" ".join(ln.split()) for ln in str(exc).splitlines()]
    text = next((ln for ln in lines if ln), "")[:limit]
    name = type(exc).__name__
    if not text:
        return name
    return f"{name}: {text}" if with_type else text
