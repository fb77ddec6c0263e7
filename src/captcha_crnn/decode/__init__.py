"""CTC decoding on log-probabilities from any engine (numpy arrays or torch tensors)."""

from .ctc import Decoded, beam_decode, decode_batch, greedy_decode

__all__ = ["Decoded", "decode_batch", "greedy_decode", "beam_decode"]
