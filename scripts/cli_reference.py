"""Write the `--help` of `captcha-crnn` and of every subcommand into docs/cli.md, from the parser itself.

    python scripts/cli_reference.py            # regenerate the section (also: make readme)
    python scripts/cli_reference.py --check    # exit 1 if docs/cli.md is stale (tests/test_readme.py runs it)

The text goes between the markers `<!-- cli-reference:start -->` and `<!-- cli-reference:end -->`.
Help is rendered with COLUMNS fixed and colour off, so the output depends only on the parser (and
on the Python version's argparse, which is recorded in the section).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"
COLUMNS = 100
VERSION_NOTE = re.compile(r"Python (\d+\.\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _parser() -> argparse.ArgumentParser:
    try:
        from captcha_crnn.cli import build_parser
    except ImportError:  # run without the package installed: use the checkout's src/
        sys.path.insert(0, str(ROOT / "src"))
        from captcha_crnn.cli import build_parser
    return build_parser()


def _help(p: argparse.ArgumentParser) -> str:
    text = _ANSI.sub("", p.format_help())
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) for each subcommand, in the order they were added (aliases once)."""
    out, seen = [], set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append((name, sub))
    return out


def render() -> str:
    """The section between the markers: the main --help, then each subcommand's."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "PYTHON_COLORS")}
    os.environ.update({"COLUMNS": str(COLUMNS), "NO_COLOR": "1", "PYTHON_COLORS": "0"})
    os.environ.pop("FORCE_COLOR", None)
    try:
        parser = _parser()
        py = f"{sys.version_info[0]}.{sys.version_info[1]}"
        parts = [f"<!-- generated from the argument parser by scripts/cli_reference.py (Python {py}, "
                 f"COLUMNS={COLUMNS}): do not edit by hand, run `make readme` -->", ""]
        for title, p in [("captcha-crnn --help", parser),
                         *((f"captcha-crnn {name} --help", sub) for name, sub in commands(parser))]:
            parts += [f"#### `{title}`", "", "```text", _help(p), "```", ""]
        return "\n".join(parts)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def replace_section(text: str, section: str) -> str:
    """text with everything between the markers replaced by section."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"the markers {START} ... {END} are missing")
    return text[: i + len(START)] + "\n" + section + text[j:]


def recorded_python(text: str) -> str | None:
    """The Python version the reference section was generated with."""
    i = text.find(START)
    m = VERSION_NOTE.search(text, i) if i >= 0 else None
    return m.group(1) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the reference section is stale; write nothing")
    ap.add_argument("--file", "--readme", dest="readme", type=Path, default=DOC,
                    help="the file to update (default: docs/cli.md)")
    a = ap.parse_args(argv)
    text = a.readme.read_text(encoding="utf-8")
    try:
        new = replace_section(text, render())
    except ValueError as e:
        print(f"{a.readme}: {e}", file=sys.stderr)
        return 2
    if a.check:
        if new != text:
            print(f"{a.readme}: the CLI reference is stale; run `make readme` "
                  f"(python scripts/cli_reference.py)", file=sys.stderr)
            return 1
        print(f"{a.readme}: the CLI reference is up to date")
        return 0
    if new != text:
        a.readme.write_text(new, encoding="utf-8")
        print(f"{a.readme}: CLI reference updated")
    else:
        print(f"{a.readme}: CLI reference already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
