"""Where the optional `ddddocr` package keeps its captcha models (found without importing it).

The package (``pip install "captcha-crnn[pretrained]"``, MIT licence) ships ONNX captcha readers:
``common.onnx``, whose convolutions are the pretrained backbone and whose LSTM and classifier (classes
CHARSET_BETA) start `--pretrained-head ddddocr` (model/pretrained.py), and ``common_old.onnx``
(classes CHARSET_OLD), the model its ``DdddOcr()`` reads with by default (infer/ddddocr_reader.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CaptchaError

INSTALL_HINT = 'pip install "captcha-crnn[pretrained]"'
CHARSET_FILE = "charsets.py"


def package_file(name: str) -> Path:
    """The path of `name` inside the installed ddddocr package; CaptchaError with the install hint."""
    spec = importlib.util.find_spec("ddddocr")
    if spec is None or not spec.submodule_search_locations:
        raise CaptchaError(f"the pretrained start needs the ddddocr package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / name
    if not path.is_file():
        raise CaptchaError(f"{path}: not found in the installed ddddocr package; reinstall it ({INSTALL_HINT})")
    return path


def installed(name: str = "common.onnx") -> bool:
    """Whether the ddddocr package with `name` is installed (nothing is imported)."""
    try:
        package_file(name)
    except CaptchaError:
        return False
    return True


def class_list(name: str) -> list[str]:
    """One of ddddocr's class lists (`name` in its charsets.py: CHARSET_OLD, CHARSET_BETA), read as a literal:
    no code is run."""
    import ast

    path = package_file(CHARSET_FILE)
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise CaptchaError(f"{path}: no {name}; not the ddddocr version this project knows")
