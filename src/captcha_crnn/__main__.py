"""`python -m captcha_crnn ...` (and `torchrun -m captcha_crnn ...`) runs the CLI."""

from .cli import main

raise SystemExit(main())
