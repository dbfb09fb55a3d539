"""``python -m svlab.train``: what ``torchrun`` starts in each process."""

import sys

from svlab.train.cli import main

sys.exit(main())
