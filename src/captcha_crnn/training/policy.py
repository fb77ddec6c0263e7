"""Tuned rules of training, each with its reason and the measurement it rests on (docs/experiments.md).

Light on purpose (no torch): the command-line help is formatted from these numbers.
"""

from __future__ import annotations

# Semi-supervised training (training/semi.py)
THRESHOLD = 0.95  # the highest per-character threshold of the flex rule, and the fixed rule's (GeeSolver's); on
# captcha_v2 from 25 labels the readings at or above it were 100% right on the held-out labels
# (benchmarks/results/student.json). Flex, the default, lowers it for classes learnt slowly: on the unseen style
# from 200 labels it read 13.8% of the held-out images against 5.6% (student_trial_flex.json, hard_200)
RAMP = 0.2  # share of the schedule over which the unlabelled loss weight rises to WEIGHT: early EMA readings are noise
WEIGHT = 1.0  # the unlabelled loss beside the labelled one at full ramp (FixMatch's lambda_u)
POOL_EPOCH = 2000  # unlabelled images an epoch covers at most: validation, the epoch line and a checkpoint come at
# least every 2000 steps' worth of images (under a minute of the pretrained teacher on this CPU), whatever the pool
ZERO_SHOT_MIN = 0.5  # ddddocr's zero-shot readings seed the pool where it reads this share of the held-out labels:
# it reads captcha_v2 94% and henan_digits4 98% untrained, the unseen styles 0-2% (../shared/NOTES.md)
