"""Limits on what a caller may ask of the decoder, one place for the CLI, the Python API and the service."""

MAX_BEAM = 64  # wider beams cost tens of milliseconds per image and read no better
MAX_LENGTH = 256  # longest fixed label length a caller may ask for
MAX_CHARSET = 4096  # longest allowed-characters string
