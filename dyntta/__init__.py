"""dyntta: test-time image enhancement (DynTTA) for robust image classification."""

from dyntta.version import __version__

__all__ = ["__version__"]
