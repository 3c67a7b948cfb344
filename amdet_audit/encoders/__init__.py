"""Text encoders behind one Adapter protocol, loaded from local files without running their code."""

from amdet_audit.encoders.base import Adapter, EncoderOutput, TextBatch
from amdet_audit.encoders.load import load_component

__all__ = ["Adapter", "EncoderOutput", "TextBatch", "load_component"]
