"""README.md stays true: its CLI reference matches the parser, and its Python quick start runs.

The quick-start code blocks are executed verbatim. They name files (a model, some images) and two
free variables (`pil_image`, `numpy_array`) that stand for a user's objects; the test provides them
rather than editing the code:

- every quoted path in the code ending in .safetensors, .png or .jpg is created, relative to a
  temporary working folder: model files are copies of a small model trained here, images are
  copies of generated captchas;
- PLACEHOLDERS gives the free variables their values (a PIL image and a numpy array).

The model is trained (two epochs, tiny preset) on images labelled from captcha_v2's alphabet,
because the quick start constrains the search to that alphabet (`charset="2345678bcdefgmnpwxy"`).
A new free name or an API change in the README makes this test fail, which is the point.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
V2_ALPHABET = "2345678bcdefgmnpwxy"


def load_script():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_current(capsys) -> None:
    ref = load_script()
    code = ref.main(["--check"])
    err = capsys.readouterr().err
    if code == 1:
        made_with = ref.recorded_python(README.read_text(encoding="utf-8"))
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if made_with and made_with != here:  # argparse formats help a little differently across versions
            pytest.skip(f"README's CLI reference was generated with Python {made_with}, this is {here}")
    assert code == 0, f"{err.strip()}\nRun `make readme` (python scripts/cli_reference.py) and commit docs/cli.md."


def test_cli_reference_check_and_write(tmp_path: Path) -> None:
    ref = load_script()
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{ref.START}\nold text\n{ref.END}\n\nafter\n", encoding="utf-8")
    assert ref.main(["--check", "--readme", str(readme)]) == 1
    assert ref.main(["--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert ref.main(["--check", "--readme", str(readme)]) == 0
    assert "old text" not in text and text.endswith(f"{ref.END}\n\nafter\n")
    section = text[text.index(ref.START):text.index(ref.END)]
    assert "#### `captcha-crnn --help`" in section
    for name in ("train", "eval", "predict", "info", "synth", "demo", "download"):
        assert f"#### `captcha-crnn {name} --help`" in section and f"usage: captcha-crnn {name}" in section
    assert all(len(line) <= ref.COLUMNS for line in section.splitlines() if not line.startswith("<!--"))
    readme.write_text("no markers\n", encoding="utf-8")
    assert ref.main(["--check", "--readme", str(readme)]) == 2


def quick_start_blocks(text: str) -> list[str]:
    """The ```python blocks of the README's '## Quick start' section."""
    start = text.index("## Quick start")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def v2_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model file, data folder): a tiny model with captcha_v2's alphabet, two epochs on generated images."""
    from conftest import render_clean

    from captcha_crnn.training import TrainConfig, train

    data = tmp_path_factory.mktemp("v2data")
    rng = random.Random(0)
    for i in range(60):
        label = "".join(rng.choice(V2_ALPHABET) for _ in range(5))
        render_clean(label, size=(200, 50), seed=i).save(data / f"{label}-{i}.png")
    out = tmp_path_factory.mktemp("v2run")
    res = train(str(data), TrainConfig(out=str(out), epochs=2, preset="tiny", label_sep="-", progress=False,
                                       batch_size=16, threads=1))
    return res.model_path, data


def test_readme_python_quick_start_runs(v2_model: tuple[Path, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    model, data = v2_model
    blocks = quick_start_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README's Quick start has no ```python block"
    code = "\n".join(blocks)
    image = sorted(data.glob("*.png"))[0]
    for rel in sorted(set(re.findall(r"""["']([^"'\s]+\.(?:safetensors|png|jpg))["']""", code))):
        dest = tmp_path / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(model if rel.endswith(".safetensors") else image, dest)
    placeholders = {"pil_image": Image.open(image), "numpy_array": np.asarray(Image.open(image).convert("L"))}
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{README.name}:Quick start", "exec"), {"__name__": "__readme__", **placeholders})
    printed = out.getvalue().splitlines()
    assert len(printed) == 4, printed  # one line per image in the README's list


def test_readme_training_one_liner_imports() -> None:
    """README: `from captcha_crnn import train, TrainConfig` (in a fresh interpreter)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", "from captcha_crnn import train, TrainConfig; "
                        "import captcha_crnn.training.loop; from captcha_crnn import train as t2; "
                        "assert callable(train) and callable(t2); TrainConfig(out='x')"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]


def test_readme_reads_in_ten_minutes() -> None:
    """The README stays a user's page (under 300 lines); detail lives in docs/."""
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 300, len(lines)
    for link in re.findall(r"\]\((docs/[^)#]+)\)", "\n".join(lines)):
        assert (ROOT / link).is_file(), link


def newcomer_path(text: str) -> list[list[str]]:
    """The `captcha-crnn` lines of the Quick start's first ```bash block (the path pasted in order), as argv."""
    import shlex

    start = text.index("## Quick start")
    block = re.findall(r"```bash\n(.*?)```", text[start:], flags=re.S)[0]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("captcha-crnn ")]


def test_readme_newcomer_path_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    """The README's shell path in order: download (here from a local zip of generated captcha_v2-like images),
    train on what was downloaded (here for one epoch), read an image of it, show the model."""
    import zipfile

    from conftest import render_clean

    from captcha_crnn.cli import main

    text = README.read_text(encoding="utf-8")
    assert text.count("make install && source .venv/bin/activate") == 1
    path = newcomer_path(text)
    assert [a[0] for a in path] == ["download", "train", "predict", "info"]
    rng = random.Random(1)
    labels = ["2b827"] + ["".join(rng.choice(V2_ALPHABET) for _ in range(5)) for _ in range(39)]
    archive = tmp_path / "captcha_v2.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, label in enumerate(labels):
            image = tmp_path / f"{label}.png"
            render_clean(label, size=(200, 50), seed=i).save(image)
            z.write(image, f"samples/{label}.png")
    monkeypatch.chdir(tmp_path)
    extra = {"download": ["--zip", str(archive), "--quiet"], "train": ["--epochs", "1", "--quiet"]}
    for argv in path:
        assert main(argv + extra.get(argv[0], [])) == 0, argv
    assert (tmp_path / "runs" / "v2" / "plan.json").is_file()
    assert '"text"' in capsys.readouterr().out  # predict --json printed a reading
