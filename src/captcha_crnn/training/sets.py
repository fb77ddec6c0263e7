"""A run's data: the split, the data-driven choices of input (colour, crop, size, augmentation), the unlabelled
pool's images, decoding (cached) and dropping unusable samples. training/plan.py makes every choice through the
functions here, once; a stage decodes with what the plan chose."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..data.alphabet import Alphabet
from ..data.dataset import DiskImages, ImageSet, cached_samples, load_samples
from ..data.images import Preprocess, crop_to_ink, image_size, open_image, time_steps, to_mode
from ..data.label_store import LABELS, STATE, LabelStore
from ..data.labels import LabelRule, Sample, list_images, read_samples
from ..data.split import split_items
from ..decode.ctc import greedy_decode_batch
from ..errors import CaptchaError
from ..evaluate import Report, score_both, selective
from ..files import atomic_write
from ..model.archs import BIG, SCRATCH
from ..model.crnn import CRNN
from ..model.run import run_batches
from ..progress import log
from . import distributed, policy
from .config import TrainConfig
from .distributed import Dist


def choose_height(cfg: TrainConfig, sizes: set[tuple[int, int]], max_len: int) -> int:
    """cfg.height, or for "auto" the smallest of policy.HEIGHTS at which the median image gives every
    character of the longest label policy.CHAR_PIXELS of width (a taller input resizes less, so small
    characters keep their strokes), never above the images' own height; 32 for cropped images
    (the crop already cuts them to the text's height) or when no size is known."""
    if cfg.height != "auto":
        return int(cfg.height)
    if cfg.crop is True or not sizes:
        return policy.HEIGHTS[0]
    ws, hs = zip(*sizes)
    w, h = float(np.median(ws)), float(np.median(hs))
    for height in policy.HEIGHTS:
        if height > max(h, policy.HEIGHTS[0]):
            break
        if w * height / h >= policy.CHAR_PIXELS * max_len:
            return height
    return max([policy.HEIGHTS[0]] + [x for x in policy.HEIGHTS if x <= h])


def choose_preprocess(cfg: TrainConfig, samples: list[Sample]) -> Preprocess:
    """Input height (choose_height); fixed width when every sampled image has one size (and no
    cropping), else aspect-preserving with padding."""
    crop = cfg.crop is True  # settled by choose(); "auto" left unresolved means no crop
    sizes = set()
    if cfg.height == "auto" or cfg.width in ("auto", None):  # only the auto choices look at the images
        for s in samples[:: max(1, len(samples) // 200)]:
            try:
                sizes.add(image_size(s.path))
            except CaptchaError:
                continue
    max_len = max(len(s.label) for s in samples)
    height = choose_height(cfg, sizes, max_len)
    common = dict(height=height, channels=cfg.channels, grey="luma" if cfg.grey == "auto" else cfg.grey)
    if cfg.width not in ("auto", None, "variable"):
        return Preprocess(width=int(cfg.width), crop=crop, **common)
    if cfg.width == "variable":
        return Preprocess(width=None, crop=crop, **common)
    min_w = 4 * (2 * max_len + 1)  # room for every char and a blank between repeats
    if len(sizes) == 1 and not crop:  # cropped boxes differ in size: keep their aspect ratio
        (w, h), = sizes
        tw = max(min_w, round(w * height / h))
        return Preprocess(width=(tw + 3) // 4 * 4, **common)
    return Preprocess(width=None, min_width=min_w, crop=crop, **common)


def ink_tensor(images: ImageSet, idx: list[int]) -> tuple[torch.Tensor, np.ndarray]:
    """The float ink (B, C, H, W) of training images idx as a tensor, and their widths (B,)."""
    x, widths = images.ink(idx)
    return torch.from_numpy(x), widths


def ctc_targets(labels: list[str], alphabet: Alphabet) -> tuple[torch.Tensor, torch.Tensor]:
    enc = [alphabet.encode(s) for s in labels]
    flat = torch.tensor([i for e in enc for i in e], dtype=torch.long)
    return flat, torch.tensor([len(e) for e in enc], dtype=torch.long)


def min_frames(label: str) -> int:
    """Frames CTC needs for a label: one per char plus a blank between repeated chars."""
    return len(label) + sum(a == b for a, b in zip(label, label[1:]))


def usable(ds: ImageSet, alphabet: Alphabet, name: str) -> ImageSet:
    """Drop (and report) samples that cannot be trained on: empty, unknown chars, too long."""
    keep, dropped = [], []
    for i, (t, lab) in enumerate(zip(time_steps(ds.widths()).tolist(), ds.labels)):
        if not lab:
            dropped.append(f"{ds.paths[i]}: empty label")
        elif alphabet.unknown(lab):
            dropped.append(f"{ds.paths[i]}: label {lab!r} has characters outside the alphabet")
        elif min_frames(lab) > t:
            dropped.append(f"{ds.paths[i]}: label {lab!r} too long for the image width ({t} steps)")
        else:
            keep.append(i)
    for d in dropped[:5]:
        log(f"warning: {name}: skipped {d}")
    if len(dropped) > 5:
        log(f"warning: {name}: skipped {len(dropped)} samples in all")
    out = ds.subset(keep)
    out.skipped = ds.skipped + dropped
    return out


def split_fractions(cfg: TrainConfig, n_labelled: int) -> tuple[float, float]:
    """(val, test) fractions of the seeded split: the flags where given (none where --val-data or
    --test-data gives the set), else 0.1 and 0.1, or under policy.FEW_LABELS labelled images 0.2 and 0: every
    label trains or calibrates, and the validation set stays big enough to choose a threshold on."""
    few = n_labelled < policy.FEW_LABELS
    val = 0.0 if cfg.val_data else cfg.val if cfg.val is not None else policy.FEW_VAL_SHARE if few else policy.VAL_SHARE
    test = 0.0 if cfg.test_data else cfg.test if cfg.test is not None else 0.0 if few else policy.TEST_SHARE
    return val, test


def load_data(cfg: TrainConfig) -> tuple[list[Sample], list[Sample], list[Sample], str]:
    rule = LabelRule(cfg.label_regex, cfg.label_sep) if (cfg.label_regex or cfg.label_sep) else None
    samples = read_samples(cfg.data, rule)
    samples = sorted(samples, key=lambda s: s.path)
    val_frac, test_frac = split_fractions(cfg, len(samples))
    tr, va, te = split_items(samples, cfg.seed, val_frac, test_frac)
    if cfg.val_data:
        va = read_samples(cfg.val_data, rule)
    if cfg.test_data:
        te = read_samples(cfg.test_data, rule)
    if not va:
        raise CaptchaError(f"{cfg.data}: too few images for a validation split ({len(samples)})")
    if cfg.case == "insensitive":
        tr, va, te = ([replace(s, label=s.label.lower()) for s in part] for part in (tr, va, te))
    elif cfg.case != "sensitive":
        raise CaptchaError(f"--case must be sensitive or insensitive, not {cfg.case!r}")
    how = f"seeded split (seed {cfg.seed}, val {val_frac:.0%}, test {test_frac:.0%})"
    if cfg.val_data or cfg.test_data:
        how += f"; val from {cfg.val_data or 'split'}, test from {cfg.test_data or 'split'}"
    return tr, va, te, how


@dataclass
class Data:
    """The loaded sets of a run and how their pixels and labels are encoded."""

    train: ImageSet
    val: ImageSet
    test: list[Sample]
    pre: Preprocess
    alphabet: Alphabet
    how: str


def load_set(samples: list[Sample], pre: Preprocess, cfg: TrainConfig, name: str, d: Dist | None = None) -> ImageSet:
    """Decoded images of `samples`: through the on-disk cache (cfg.cache_dir, default OUT/cache), built by
    the first process on each machine and reused when it exists; or held in memory (cache_dir "memory")."""
    d = d or Dist()
    threads = cfg.threads or distributed.threads_per_process(Dist(local_world=1))
    if cfg.cache_dir == "memory":
        return load_samples(samples, pre, f"loading {name}", cfg.progress, threads)
    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"
    t0 = time.perf_counter()
    ds = cached_samples(samples, pre, root, f"decoding {name}", cfg.progress, threads, build=d.local_rank == 0)
    if isinstance(ds.images, DiskImages):
        mb = int(ds.images.widths.sum()) * pre.channels * pre.height / 1e6
        log(f"decoded {name} images: {len(ds)} ({mb:.1f} MB) in {ds.images.folder} ({time.perf_counter() - t0:.1f}s)")
    return ds


def prepare_data(cfg: TrainConfig, stage: Any, ckpt: dict[str, Any] | None, d: Dist | None = None) -> Data:
    """A stage's data: its split, the train and val images decoded at the input the plan chose for it (a
    checkpoint's where resuming), with its alphabet."""
    tr, va, te, how = load_data(cfg)
    pre = Preprocess.from_dict(ckpt["preprocess"]) if ckpt else stage.pre
    log(f"data: {cfg.data}: {len(tr)} train, {len(va)} val, {len(te)} test images")
    log(f"input: height {pre.height}, width {pre.width or 'aspect-preserving, padded'}, "
        f"{'grey' if pre.channels == 1 else 'colour'}")
    train_set = load_set(tr, pre, cfg, "train", d)
    val_set = load_set(va, pre, cfg, "val", d)
    alphabet = Alphabet(ckpt["alphabet"] if ckpt else stage.alphabet)
    train_set = usable(train_set, alphabet, "train")
    if len(train_set) == 0:
        raise CaptchaError(f"{cfg.data}: no usable training images")
    val_set = usable(val_set, alphabet, "val")
    log(f"alphabet ({len(alphabet)}): {alphabet.chars}")
    return Data(train_set, val_set, te, pre, alphabet, how)


def held_out_samples(meta: dict[str, Any], data: str | None = None) -> list[Sample]:
    """The test split a model's training made (from the config its metadata stores; `data` where the
    set has moved), its validation images where it made no test split (under 300 labels), or [] when
    the metadata does not say."""
    tr = meta.get("training", {})
    src = data or tr.get("data")
    if not src or not isinstance(tr.get("config"), dict):
        return []
    _, val, test, _ = load_data(TrainConfig.from_dict({**tr["config"], "data": str(src)}))
    return test or val


# Reading a loaded set during training: CTC loss per image, greedy readings, the report -----------------------
@torch.inference_mode()
def read_set(model: CRNN, ds: ImageSet, alphabet: Alphabet, device: str,
             batch_size: int = 64) -> tuple[list[float], list[str], list[float]]:
    """Per image: CTC loss per character (nan where the label cannot be scored), the greedy reading and its
    confidence; batched by width: one forward, one greedy decode and one CTC loss call per batch."""
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


# The unlabelled pool ----------------------------------------------------------------------------------
LIST_SUFFIX = ".txt"  # a file of image paths, one a line: how a run hands its pool to its stages


def write_list(images: list[str], path: Path) -> str:
    """Write `images` as a list file (atomically) and return its path, to pass as one unlabelled entry (a run's
    config and model metadata then name one file, not every image)."""
    text = "".join(f"{p}\n" for p in images)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text.encode()))
    return str(path)


def expand_lists(paths: list[str]) -> list[str]:
    """The entries of `paths` with each list file replaced by the paths it holds."""
    out: list[str] = []
    for p in paths:
        if p.endswith(LIST_SUFFIX) and Path(p).is_file():
            out.extend(line for line in Path(p).read_text().splitlines() if line.strip())
        else:
            out.append(p)
    return out


def unlabelled_images(paths: list[str], exclude: list[Sample]) -> list[str]:
    """Absolute paths of the images under `paths` (folders, files, globs), less the labelled ones."""
    if not paths:
        return []
    labelled = {str(Path(s.path).resolve()) for s in exclude}
    found = {str(p.resolve()) for p in list_images(expand_lists(paths))}
    return sorted(found - labelled)


def label_folder_unlabelled(data: str) -> list[str]:
    """For the labels.csv of a `captcha-crnn label` folder (labels.state.json beside it), that folder's
    images without an answer (nor marked unreadable); else []."""
    path = Path(data)
    folder = path if path.is_dir() else path.parent
    if not ((folder / STATE).is_file() and (path.is_dir() or path.name == LABELS)):
        return []
    store = LabelStore(folder)
    answers = store.read()
    return [str(store.path(n).resolve()) for n in store.names
            if n not in answers.labels and n not in answers.unreadable]


# Data-driven choices (the plan applies them, prints why and stores them in the model) ---------------------
def sample_images(samples: list[Sample], k: int = 48) -> list[Image.Image]:
    """Up to k evenly spaced training images, opened as RGB (unreadable ones left out)."""
    images = []
    for s in samples[:: max(1, len(samples) // k)][:k]:
        try:
            images.append(to_mode(open_image(s.path), 3))
        except CaptchaError:
            continue
    return images


def colour_share(images: list[Image.Image]) -> float:
    """Mean share of pixels whose channels differ by more than 40 levels."""
    shares = []
    for im in images:
        rgb = np.asarray(im, dtype=np.int16)
        shares.append(float(((rgb.max(-1) - rgb.min(-1)) > 40).mean()))
    return float(np.mean(shares)) if shares else 0.0


def text_share(images: list[Image.Image]) -> tuple[float, int]:
    """(mean share of the image area its text box covers (data/images.py: crop_to_ink), number of
    distinct image sizes)."""
    shares = []
    for im in images:
        box = crop_to_ink(im)
        shares.append(box.width * box.height / max(1, im.width * im.height))
    return (float(np.mean(shares)) if shares else 1.0), len({im.size for im in images})


def choose(cfg: TrainConfig, samples: list[Sample]) -> tuple[dict[str, Any], list[str]]:
    """A choice, made from the training samples, for each data-dependent "auto" field of cfg (colour, grey, crop,
    model size, augmentation), and why (training/plan.py applies them)."""
    changes: dict[str, Any] = {}
    notes: list[str] = []
    images = sample_images(samples) if "auto" in (cfg.channels, cfg.crop, cfg.grey) else []  # opened once for all
    share = colour_share(images) if "auto" in (cfg.channels, cfg.grey) else 0.0
    if cfg.channels == "auto":
        changes["channels"] = 3 if share > policy.COLOUR_PIXELS else 1
        notes.append(f"{'colour' if changes['channels'] == 3 else 'grey'} ({share:.1%} coloured pixels)")
    if cfg.grey == "auto":  # the contrast grey costs reading time; it pays where colour carries the text
        changes["grey"] = "contrast" if share > policy.COLOUR_PIXELS else "luma"
        if changes.get("channels", cfg.channels) in (1, "1"):
            notes.append(f"grey as {'contrast to the background' if changes['grey'] == 'contrast' else 'luma'}")
    if cfg.crop == "auto":
        share, n_sizes = text_share(images)  # one image size: a fixed layout, kept as it is
        changes["crop"] = share < policy.CROP_BELOW and n_sizes > 1
        notes.append(f"{'crop to the text' if changes['crop'] else 'no crop'} (text box {share:.0%} of the image, "
                     f"{n_sizes} image size{'s' if n_sizes > 1 else ''})")
    if cfg.preset == "auto":
        changes["preset"] = BIG.name if len(samples) >= policy.BIG_DATA else SCRATCH.name
        notes.append(f"model {changes['preset']} ({len(samples)} training images)")
    if cfg.augment == "auto":
        changes["augment"] = policy.AUGMENT_SMALL if len(samples) < policy.SMALL_DATA else policy.AUGMENT_BIG
        notes.append(f"augmentation {changes['augment']}")
    return changes, notes
