"""Bad options: predict/train command-line options, charsets and decoding options are one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bad_input import (
    MODEL,
    assert_cli_error,
    captcha,
    own_cache,  # noqa: F401 (autouse: ONNX exports go to the session's folder)
    raises_naming,
    run_cli,
    write_images,
)

from captcha_crnn.cli import main
from captcha_crnn.data.labels import LabelRule
from captcha_crnn.infer import Recognizer

# ---------------------------------------------------------------- options: bad numbers are errors, not tracebacks


@pytest.mark.parametrize("opts, needle", [
    (["--beam", "0"], "argument --beam"), (["--beam", "100000"], "argument --beam"),
    (["--length", "0"], "argument --length"), (["--length", "x"], "argument --length"),
    (["--threads", "-1"], "argument --threads"), (["--batch-size", "0"], "argument --batch-size"),
])
def test_predict_option_out_of_range_is_a_usage_error(opts: list[str], needle: str, tmp_path: Path, capsys) -> None:
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    with pytest.raises(SystemExit) as ei:
        main(["predict", MODEL, str(img), *opts])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "Traceback" not in err
    assert f"captcha-crnn predict: error: {needle}" in err


def test_empty_or_unknown_charset(tmp_path: Path, capsys) -> None:
    img = tmp_path / "2b4c5.png"
    captcha().save(img)
    for charset, needle in (("", "charset is empty"), ("Z", "does not know: Z")):
        code, _, err = run_cli(["predict", MODEL, img, "--charset", charset, "--engine", "torch", "--threads", "1"],
                               capsys)
        assert_cli_error(code, err, needle)


def test_python_api_rejects_bad_decoding_options() -> None:
    rec = Recognizer.load(MODEL, engine="torch", threads=1)
    img = np.asarray(captcha())
    raises_naming(rec.predict, img, beam=0, needles=("beam must be",))
    raises_naming(rec.predict, img, length=0, needles=("length must be",))
    raises_naming(rec.predict, img, length=-2, needles=("length must be",))
    raises_naming(rec.predict, img, charset="", needles=("charset is empty",))
    raises_naming(Recognizer.load, MODEL, threads=0, needles=("threads must be",))
    assert len(rec.predict(img, beam=3, length=5).text) == 5


@pytest.mark.parametrize("opts", [
    ["--height", "20"], ["--height", "0"], ["--val", "1.5"], ["--test", "-0.2"], ["--val", "0.6", "--test", "0.5"],
    ["--epochs", "0"], ["--batch-size", "0"], ["--width", "abc"], ["--width", "2"], ["--threads", "-1"],
    ["--lr", "-1"], ["--dropout", "2"], ["--patience", "0"], ["--max-minutes", "-1"], ["--augment", "-1"],
    ["--augment", "lots"], ["--label-regex", "(["],
])
def test_train_options_out_of_range(opts: list[str], tmp_path: Path, capsys) -> None:
    """A bad option is one error line naming it (argparse's usage error or ours), before any training."""
    write_images(tmp_path / "data", ["22-0.png", "33-1.png", "44-2.png", "55-3.png"])
    try:
        code = main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet", *opts])
    except SystemExit as e:  # rejected by the argument parser itself
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and opts[0] in lines[0], err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_label_rule_and_train_config_validate_in_python() -> None:
    from captcha_crnn.training import TrainConfig

    raises_naming(LabelRule, regex="(unclosed", needles=("not a valid regular expression",))
    raises_naming(TrainConfig(height=40).validate, needles=("--height must be a multiple of 16", "not 40"))
    raises_naming(TrainConfig(width=8).validate, needles=("--width must be a number of pixels, at least 16", "not 8"))
    assert TrainConfig(width="96").validate().width == "96"  # digits, as the Python API always took
    raises_naming(TrainConfig(preset="huge").validate, needles=("--preset must be tiny or small",))
    assert TrainConfig().validate() == TrainConfig()
