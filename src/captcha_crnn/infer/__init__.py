"""Reading captchas: the Recognizer (a trained model), its predictions, and the Reader interface
every reader offers (the Recognizer and ddddocr's zero-shot reader)."""

from .reader import Reader
from .recognizer import Prediction, Recognizer

__all__ = ["Prediction", "Reader", "Recognizer"]
