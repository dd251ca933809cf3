"""User-facing errors. The CLI prints these as one line and exits non-zero (no traceback)."""


class MemvosError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class InputError(MemvosError):
    """A video, frame, mask or annotation that cannot be used."""


class WeightsError(MemvosError):
    """A weights file that is missing, unreadable or has the wrong layout."""


class OptionError(MemvosError, ValueError):
    """An option out of its range (e.g. ``--top-k 0``): a one-line user error, and a ValueError in Python."""
