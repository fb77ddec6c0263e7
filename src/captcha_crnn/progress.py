"""The one rule for progress bars: shown when asked for and stderr is a terminal."""

from __future__ import annotations


def bar_disable(progress: bool) -> bool | None:
    """tqdm's `disable` for a progress setting: True when not asked for; else None, which tqdm reads as
    "off unless stderr is a terminal", so a log redirected to a file or pipe holds the one-line-per-epoch
    messages and no carriage-return updates."""
    return None if progress else True
