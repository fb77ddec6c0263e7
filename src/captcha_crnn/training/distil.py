"""Distillation: the student also matches the teacher's per-step readings of the same augmented images.

The teacher (a model file, usually the pretrained model fine-tuned on the same labels) reads each
training batch at its own input size, augmented exactly as the student's copy is (the same random
draws), so its soft readings describe the very view the student sees (Beyer et al. 2022: a consistent
teacher). The two models' time steps differ in number (a step is 4 input columns, and the teacher's
input is taller, so wider), so the teacher's per-step distributions are put onto the student's steps
(to_student_steps: per character the highest probability of the teacher steps a student step covers,
so a CTC spike keeps its height, where an average would halve it). The loss adds
WEIGHT * T^2 * KL(teacher_T || student_T) per step to the CTC loss of the labels (Hinton et al. 2015).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.alphabet import Alphabet
from ..data.augment import policy
from ..data.dataset import ImageSet
from ..data.labels import Sample
from ..errors import CaptchaError
from ..model.crnn import CRNN
from ..model.modelfile import load_bundle
from .config import TrainConfig
from .data import ink_tensor, load_set
from .log import log

TEMPERATURE = 2.0  # softens both sides' distributions, so the teacher's second choices carry weight
WEIGHT = 1.0  # of the distillation term beside the CTC loss of the labels


def class_map(teacher: Alphabet, student: Alphabet) -> torch.Tensor:
    """(C_s,) the teacher's class for each student class (blank -> blank), -1 where it has none."""
    return torch.tensor([0] + [teacher.index.get(c, -1) for c in student.chars], dtype=torch.long)


def to_student_steps(q: torch.Tensor, n: int) -> torch.Tensor:
    """One image's teacher distributions (T_t, C) -> (n, C) on the student's n steps.

    Fewer steps: each teacher step falls into the student step under its centre (so the bins do not
    overlap and a blank between two spikes of a repeated character keeps a step of its own wherever
    the spikes are three or more teacher steps apart at a ratio up to 1.5); a student step takes per
    character the highest probability in its bin and blank the rest, renormalised where two characters
    share a step. As many steps or more: each student step takes the teacher step at its centre."""
    t = q.shape[0]
    if n >= t:
        return q[((torch.arange(n) + 0.5) * t / n).long()]
    bins = ((2 * torch.arange(t) + 1) * n // (2 * t)).to(q.device)  # (T_t,) student step of each teacher step
    chars = torch.zeros(n, q.shape[1] - 1, device=q.device, dtype=q.dtype)
    chars = chars.scatter_reduce_(0, bins[:, None].expand(-1, chars.shape[1]), q[:, 1:], "amax",
                                  include_self=False)  # (n, C-1)
    blank = (1 - chars.sum(1, keepdim=True)).clamp_min(1e-6)  # (n, 1)
    out = torch.cat([blank, chars], 1)
    return out / out.sum(1, keepdim=True)


def kd_loss(student_logp: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
            temperature: float = TEMPERATURE) -> torch.Tensor:
    """T^2 * mean over the valid steps of KL(targets || softmax(student / T)).

    student_logp (B, T, C) log-probabilities; targets (B, T, C) probabilities at temperature T (zero
    past an image's length); lengths (B,) valid steps."""
    logp = (student_logp / temperature).log_softmax(-1)  # (B, T, C)
    valid = torch.arange(student_logp.shape[1])[None, :] < lengths[:, None]  # (B, T)
    kl = (targets * (targets.clamp_min(1e-8).log() - logp)).sum(-1)  # (B, T)
    return kl[valid].mean() * temperature**2


class Teacher:
    """A model file that reads the training images beside the student, and its soft targets."""

    def __init__(self, path: str, train: ImageSet, alphabet: Alphabet, cfg: TrainConfig, device: str):
        b = load_bundle(path, device)
        self.model = b.model.to(device).eval().to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cols = class_map(b.alphabet, alphabet)
        missing = "".join(c for c, k in zip(alphabet.chars, self.cols[1:].tolist()) if k < 0)
        if missing:  # its readings would teach the student never to write them
            raise CaptchaError(f"{path}: the teacher's alphabet lacks {missing!r} of the training labels' characters")
        samples = [Sample(p, lab) for p, lab in zip(train.paths, train.labels)]
        self.images = load_set(samples, b.preprocess, cfg, "train (the teacher's input)")
        if len(self.images) != len(train):
            raise CaptchaError(f"{path}: the teacher could decode {len(self.images)} of the {len(train)} "
                               "training images")
        log(f"distillation: {path} reads every batch too (input height {b.preprocess.height}); KL at temperature "
            f"{TEMPERATURE:g}, weight {WEIGHT:g}")

    def batch(self, idx: list[int]) -> tuple[torch.Tensor, np.ndarray]:
        """The teacher's input for the training images idx: ink (B, C, H, W), widths (B,)."""
        return ink_tensor(self.images, idx)

    @torch.no_grad()
    def targets(self, x: torch.Tensor, widths: np.ndarray, aug_state: torch.Tensor, strength: float | str,
                lengths: torch.Tensor, steps: int, bf16: bool) -> torch.Tensor:
        """(B, steps, C_s) the teacher's distributions at TEMPERATURE on the student's steps.

        x: the teacher's input, augmented here with the generator state the student's copy used."""
        dev = x.device
        x = policy(x, strength, torch.Generator().set_state(aug_state)).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            logp = self.model(x)  # (B, T_t, C_t)
        q = (logp.float()[..., self.cols] / TEMPERATURE).softmax(-1)  # (B, T_t, C_s): the student's classes
        t_lens = CRNN.output_lengths(widths).clamp_max(logp.shape[1]).tolist()
        out = torch.zeros(len(q), steps, q.shape[-1], device=dev)
        for i, (nt, ns) in enumerate(zip(t_lens, lengths.tolist())):
            out[i, :ns] = to_student_steps(q[i, :nt], ns)
        return out
