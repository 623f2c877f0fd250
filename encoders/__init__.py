"""One encoder per modality; each returns a TokenSequence."""

from omnifuse.encoders.base import TokenSequence

__all__ = ["TokenSequence"]
