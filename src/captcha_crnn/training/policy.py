"""Every tuned rule of training, each with its reason and the measurement it rests on (docs/experiments.md).

Light on purpose (no torch): the command-line help is formatted from these numbers, and training/plan.py
reads them when it settles a run's decisions.
"""

from __future__ import annotations

# The start (training/start.py)
PRETRAINED_MIN_LABELS = 50  # the ddddocr backbone from this many labelled images (benchmarks/learning_curve.py:
# from 50 labels the pretrained teacher's readings teach the small model; below, the small model from the shipped
# synthetic one is the whole recipe)
TUNED_HEIGHT_FROM_LABELS = 250  # the ddddocr backbone at its tuned 48 rows from this many labels, else its native 64:
# captcha_v2, 100 labels: 4% at 48 rows, 96.5% at 64; 250: 98.7% at 48, 97.5% at 64; 936: the same at 2.6-3.0x the
# images/s (train_throughput.py); generic_varlen 56.3% at 48 against 53.3% at 32 in 10 minutes (time_curve.py)
READER_HEAD_UNDER_LABELS = 500  # under this many labels the pretrained start keeps ddddocr's LSTM and classifier
# too (--pretrained-head auto): a new head from a few hundred labels throws ddddocr's zero-shot reading away
# (generic_varlen from 250 random labels + the rest unlabelled, 10 minutes: 28.75% held-out against 1.13%); with
# more the new head at 48 rows learns more per minute (captcha_v2's 936 labels, 3 minutes: its teachers read
# 96.81 / 100 / 93.62% against 98.94 / 100 / 98.94%), and ddddocr's LSTM needs 64 rows' features
READER_HEAD_MIN_ZERO_SHOT = 0.1  # ... and where ddddocr reads this share of the held-out labels untrained: where it
# reads none (the unseen style: it drops the lens-squeezed outer characters) its head taught the teacher no more
# than a new one (hard_200: teacher 15% of validation against 25%; output 11.4% against 13.2%); generic_varlen 28%
PROBE_IMAGES = 200  # labelled images ddddocr's zero-shot probe reads (held-out first; untrained, all are unseen):
# 40 held-out images put a 10% threshold at 4 images (securimage, 200 labels: seed 0 read 5%, seed 1 10%)
UNKNOWN_STYLE_ZERO_SHOT = 0.2  # with unlabelled images, a style ddddocr reads under this share of untrained gets the
# small model alone for the whole budget, its own EMA reading the pool: securimage (ddddocr 15% of 200), 200 labels +
# 4,800 unlabelled, 10 min, fp32, seeds 0/1: 87.4/87.3% of 1,000 held out alone against 86.7/86.2% with the teacher's
# 4 minutes first; three other real styles: the teacher read 0-47.5% of its validation after its 4 minutes, the
# student 65-80%. generic_varlen (ddddocr 25.5% of 200) keeps its teacher, which wins there

# The data (training/sets.py)
COLOUR_PIXELS = 0.02  # share of strongly coloured pixels above which colour is kept (captcha_v2: 0%, generic: 30%)
BIG_DATA = 50_000  # images from which the larger model pays for itself (benchmarks/datasets.py)
SMALL_DATA = 5_000  # images below which augmentation runs at full strength (learning_curve.py)
CROP_BELOW = 0.3  # crop to the text when its box covers under this share of images of varying sizes
CHAR_PIXELS = 24  # input width per character the auto height aims for (6 CTC frames)
HEIGHTS = (32, 48, 64)  # the auto height's choices, smallest first
FEW_LABELS = 300  # under this many labelled images: no test split, a larger validation split to choose on
VAL_SHARE, TEST_SHARE = 0.1, 0.1  # the seeded split's validation and test shares
FEW_VAL_SHARE = 0.2  # under FEW_LABELS: every label trains or calibrates, and 20% is enough to choose a threshold on
AUGMENT_SMALL, AUGMENT_BIG = 1.0, 0.5  # augmentation strength under SMALL_DATA images, and from there
EARLY_STOP_MIN_VAL = 100  # validation images from which an early stop tells progress from noise

# The optimisation (training/loop.py; docs/experiments.md "Training on captcha_v2")
DEFAULT_EPOCHS = 60  # without a time budget or --epochs: captcha_v2's 936 labels reach their best in 36-60 epochs
# (seeds 1/0/2) and 30 left 97.87/98.94/97.87% against 97.87/100/98.94% with 60
BATCH_SIZE = 32  # images per step: small sets (a few hundred labels) get enough steps per minute on 2 cores
LR = 3e-3  # AdamW's peak: the small model from the shipped synthetic one reaches 98.94% of captcha_v2's test split
# in 3 minutes; on frozen ddddocr features a new head read 97.8% at 1e-3 without the projection, and a projection at
# 3e-3 over-fitted (49% falling to 10%), which is why the pretrained preset has none
WEIGHT_DECAY = 1e-2  # AdamW's, on matrices and kernels only (not on biases and norms)
WARMUP = 0.15  # share of the schedule spent warming up (from LR_START of the peak): a warm-started model's first
# steps at the full rate undo what it copied
LR_START = 0.04  # the warm-up's first learning rate, as a share of the peak
LR_FINAL = 0.01  # the cosine decay's last learning rate, as a share of the peak
CLIP = 5.0  # gradient norm clipping: CTC's first steps on a new alphabet give rare large gradients
PATIENCE = 10  # epochs without a validation gain before an early stop: captcha_v2's best epochs come 10-25 apart
EMA_DECAY = 0.99  # the kept weights' moving average: the kept model is less a matter of which epoch ended well
# (captcha_v2 seed 0 98.94% with and without; the few-label runs read the pool with it)
DROPOUT = 0.1  # before the classifier and between RNN layers
FREEZE_EPOCHS = 2  # passes over the labelled images in which a pretrained backbone stays fixed: one instead of two
# read 53.87% against 53.12% of generic_varlen's test images (inside the run-to-run spread)
BACKBONE_LR = 0.1  # a pretrained backbone's learning rate as a share of LR: its features are already captcha ones

# The recipe (training/plan.py, training/run.py)
TEACHER_SHARE = 0.4  # of the time budget for the teacher when it trains first (learning_curve.py); the student
# takes what is left
LABELS_ONLY_STUDENT_SHARE = 0.5  # the student's share when it trains first (nothing unlabelled): on generic_varlen
# it levels off near 40% while the teacher still rises
PLATEAU_EPOCHS = 3  # the first stage's patience: the time its early stop saves goes to the stage after it
LAST_STAGE_FLOOR = 0.1  # the last stage's least share of the budget: where the stages before it overran theirs
# (a slow first validation, a test pass), it still gets this much, and the run overruns by at most that
OUTPUT_MARGIN = 0.005  # the student is the output when it reads the held-out labels within one image or this
# share of the teacher (at about 10x the teacher's speed)

# Semi-supervised training (training/semi.py)
THRESHOLD = 0.95  # the highest per-character threshold of the flex rule, and the fixed rule's (GeeSolver's); on
# captcha_v2 from 25 labels the readings at or above it were 100% right on the held-out labels
# (benchmarks/results/student.json). Flex, the default, lowers it for classes learnt slowly: on the synthetic unseen
# style from 200 labels it read 13.8% of the held-out images against 5.6% (docs/experiments.md)
RAMP = 0.2  # share of the schedule over which the unlabelled loss weight rises to UNLABELLED_WEIGHT: early EMA
# readings are noise
UNLABELLED_WEIGHT = 1.0  # the unlabelled loss beside the labelled one at full ramp (FixMatch's lambda_u)
POOL_EPOCH = 2000  # unlabelled images an epoch covers at most: validation, the epoch line and a checkpoint come at
# least every 2000 steps' worth of images (under a minute of the pretrained teacher on this CPU), whatever the pool
ZERO_SHOT_MIN = 0.5  # ddddocr's zero-shot readings seed the pool where it reads this share of the held-out labels:
# it reads captcha_v2 94% and henan_digits4 98% untrained, the unseen styles 0-2% (../shared/NOTES.md)
