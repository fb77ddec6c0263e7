"""One voice per training run: messages from rank 0 only (RANK comes from torchrun's environment)."""

from __future__ import annotations

import os
import sys


def log(msg: str) -> None:
    """Print a message above the progress bar, in the process of rank 0 only."""
    if os.environ.get("RANK", "0") != "0":
        return
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)
