"""Evaluation: world scores read off images by the analytic detector, fidelity metrics, learned scorers."""

from meissonic.eval.metrics import psnr, reconstruction_psnr, ssim
from meissonic.eval.world import CATEGORIES, check_task, detector_agreement, relation_holds, score

__all__ = [
    "CATEGORIES",
    "check_task",
    "detector_agreement",
    "psnr",
    "reconstruction_psnr",
    "relation_holds",
    "score",
    "ssim",
]
