"""memvos: semi-supervised video object segmentation with space-time memory networks."""

from memvos.errors import InputError, MemvosError, WeightsError

__version__ = "0.2.1"

__all__ = ["InputError", "MemvosError", "WeightsError", "__version__"]
