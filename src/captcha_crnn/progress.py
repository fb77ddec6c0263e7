"""Progress: the one rule for progress bars (shown when asked for and stderr is a terminal), and the one voice of
a training run (messages above the bar, from torchrun's rank 0 only)."""

from __future__ import annotations

import os
import sys


def bar_disable(progress: bool) -> bool | None:
    """tqdm's `disable` for a progress setting: True when not asked for; else None, which tqdm reads as
    "off unless stderr is a terminal", so a log redirected to a file or pipe holds the one-line-per-epoch
    messages and no carriage-return updates."""
    return None if progress else True


def log(msg: str) -> None:
    """Print a message above the progress bar, in the process of rank 0 only (RANK: torchrun's environment)."""
    if os.environ.get("RANK", "0") != "0":
        return
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)
