"""omnifuse: multimodal fusion into a shared Mixture-of-Experts decoder.

The public API is imported lazily so that ``import omnifuse`` stays cheap (no torch import until used).
"""

__version__ = "0.1.0"

__all__ = ["OmniModel", "Predictor", "__version__"]

from omnifuse import _moved
from omnifuse.app import threads as _threads

_moved.install()  # module paths from before tasks/ was split still import: see _moved.py
_threads.prepare_process()  # the OpenMP wait policy, if torch is not loaded yet: see app/threads.py


def __getattr__(name: str):
    if name == "OmniModel":
        from omnifuse.tasks.model import OmniModel

        return OmniModel
    if name == "Predictor":
        from omnifuse.app.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'omnifuse' has no attribute {name!r}")
