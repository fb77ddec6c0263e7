"""Reading captchas with a trained model: the Recognizer and its predictions."""

from .recognizer import Prediction, Recognizer

__all__ = ["Prediction", "Recognizer"]
