"""defectfusion: text-visual fusion for DEIMv2 industrial defect detectors."""

from __future__ import annotations

__version__ = "0.1.0"
