"""Reading a loaded set during training: CTC loss per image, greedy readings, and the report."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.alphabet import Alphabet
from ..data.dataset import ImageSet
from ..decode.ctc import greedy_decode_batch
from ..evaluate import Report, score_both, selective
from ..model.crnn import CRNN
from ..model.run import run_batches
from . import distributed
from .data import ctc_targets
from .distributed import Dist


@torch.inference_mode()
def read_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str,
             batch_size: int = 64) -> tuple[list[float], list[str], list[float]]:
    """Per image: CTC loss per character (nan where the label cannot be scored), the greedy reading
    and its confidence.

    Batched by width: one forward, one greedy decode and one CTC loss call per batch.
    """
    model.eval()
    losses, preds, confs = [float("nan")] * len(ds), [""] * len(ds), [0.0] * len(ds)

    def load(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return ds.ink(idx)  # (B, C, H, W) float ink, (B,)

    def run(x: np.ndarray) -> torch.Tensor:
        return model(torch.from_numpy(x).to(device)).float().cpu()  # (B, T, classes)

    for idx, lp, steps in run_batches(ds.widths().tolist(), batch_size, load, run):
        lens = torch.from_numpy(steps)  # (B,) valid frames
        for i, d in zip(idx, greedy_decode_batch(lp.numpy(), steps.tolist())):
            preds[i], confs[i] = alphabet.decode(d.indices), d.confidence
        ok = [k for k, i in enumerate(idx) if ds.labels[i] and not alphabet.unknown(ds.labels[i])]
        if ok:
            targets, target_lens = ctc_targets([ds.labels[idx[k]] for k in ok], alphabet)
            nll = F.ctc_loss(lp[ok].transpose(0, 1), targets, lens[ok], target_lens, blank=0,
                             reduction="none", zero_infinity=True)  # (B',) summed over each label
            for k, v in zip(ok, (nll / target_lens).tolist()):
                losses[idx[k]] = v
    return losses, preds, confs


def evaluate_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str,
                 d: Dist | None = None) -> tuple[float, Report, list[str], list[float]]:
    """(mean CTC loss, report, predictions, their confidences) of the model on a loaded set.

    In a distributed run each rank reads every world-th image and all ranks get the same figures.
    """
    d = d or Dist()
    idx = list(range(d.rank, len(ds), d.world))
    losses, preds, confs = read_set(model, ds.subset(idx) if d.enabled else ds, alphabet, device)
    if d.enabled:
        parts = distributed.all_gather((idx, losses, preds, confs), d)
        losses, preds, confs = [float("nan")] * len(ds), [""] * len(ds), [0.0] * len(ds)
        for part in parts:
            for i, loss, pred, conf in zip(*part):
                losses[i], preds[i], confs[i] = loss, pred, conf
    scored = [v for v in losses if not np.isnan(v)]
    rep = score_both(ds.labels, preds, alphabet.chars)
    rep.selective = selective(ds.labels, preds, confs)
    return float(np.mean(scored)) if scored else float("nan"), rep, preds, confs


