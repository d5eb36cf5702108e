"""``python -m defectfusion`` (also what ``torchrun -m defectfusion`` runs)."""

import sys

from .cli import main

sys.exit(main())
