"""ImageNet-C scores: corruption errors, mCE normalised by AlexNet, relative mCE (Hendrycks & Dietterich 2019).

For a classifier f with top-1 error E(c, s) on corruption c at severity s (s = 1..5):

    CE(c)          = sum_s E(c, s) / sum_s E_AlexNet(c, s)
    relative CE(c) = sum_s (E(c, s) - E_clean) / sum_s (E_AlexNet(c, s) - E_AlexNet_clean)
    mCE            = mean of CE(c) over the 15 benchmark corruptions (x 100, in percent)
    relative mCE   = mean of relative CE(c) over the same 15

AlexNet's errors are the published per-severity top-1 errors of the benchmark (the
constants of the ImageNet-C evaluation code; their severity means are the familiar
0.886428 for Gaussian noise and so on); AlexNet's clean error is that network's
ImageNet-1K val error, 43.478 % (torchvision's AlexNet, acc@1 56.522; the paper's
Table 1 rounds it to 43.5). mCE is defined over all 15 corruptions: with fewer present the
AlexNet-normalised mean is reported as ``mce_partial`` over those only, never as mCE.
The four "extra" corruptions (speckle noise, Gaussian blur, spatter, saturate) have no
AlexNet normalisation in the benchmark and count only towards the unnormalised mean.
"""
from __future__ import annotations

from typing import Any, Mapping

# The 15 benchmark corruptions in the paper's (mCE) order, with AlexNet's top-1 error per severity 1..5.
ALEXNET_ERRORS: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
BENCHMARK = tuple(ALEXNET_ERRORS)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALEXNET_CLEAN_ERROR = 0.43478
SEVERITIES = (1, 2, 3, 4, 5)
SOURCE = ("Hendrycks & Dietterich, ICLR 2019: AlexNet's per-severity top-1 errors of the ImageNet-C "
          "evaluation code; AlexNet clean error 43.478 % (torchvision AlexNet acc@1 56.522)")


def alexnet_mean_error(corruption: str) -> float:
    """AlexNet's top-1 error on ``corruption`` averaged over the five severities."""
    return sum(ALEXNET_ERRORS[corruption]) / len(SEVERITIES)


def corruption_error(errors: Mapping[int, float], corruption: str) -> float:
    """CE(c): the classifier's summed errors over AlexNet's, over the severities 1..5 (all needed)."""
    _check_severities(errors, corruption)
    return sum(errors[s] for s in SEVERITIES) / sum(ALEXNET_ERRORS[corruption])


def relative_corruption_error(errors: Mapping[int, float], corruption: str, clean_error: float) -> float:
    """Relative CE(c): the classifier's error increase over clean, over AlexNet's, summed over severities."""
    _check_severities(errors, corruption)
    own = sum(errors[s] - clean_error for s in SEVERITIES)
    alexnet = sum(e - ALEXNET_CLEAN_ERROR for e in ALEXNET_ERRORS[corruption])
    return own / alexnet


def _check_severities(errors: Mapping[int, float], corruption: str) -> None:
    if corruption not in ALEXNET_ERRORS:
        raise ValueError(f"{corruption!r} is not one of the 15 ImageNet-C benchmark corruptions (no AlexNet errors)")
    missing = [s for s in SEVERITIES if s not in errors]
    if missing:
        raise ValueError(f"{corruption}: severities {missing} missing; CE needs all five")


def summarize(errors: Mapping[str, Mapping[int, float]], clean_error: float | None = None) -> dict[str, Any]:
    """Every ImageNet-C number from per-(corruption, severity) top-1 errors (fractions in [0, 1]).

    Returns (percent where it is an error or a CE): ``mean_error`` (unnormalised mean over every
    corruption and severity given), ``corruption_errors`` and ``relative_corruption_errors`` (per
    benchmark corruption with all five severities), ``mce`` / ``relative_mce`` (None unless all 15
    are there; relative needs ``clean_error``), ``mce_partial`` over the benchmark corruptions present,
    and ``coverage`` (which corruptions counted and which were missing or extra).
    """
    all_errors = [e for per in errors.values() for e in per.values()]
    complete = [c for c in BENCHMARK if c in errors and all(s in errors[c] for s in SEVERITIES)]
    ce = {c: 100.0 * corruption_error(errors[c], c) for c in complete}
    rel = ({c: 100.0 * relative_corruption_error(errors[c], c, clean_error) for c in complete}
           if clean_error is not None else {})
    full = len(complete) == len(BENCHMARK)
    return {
        "mean_error": 100.0 * sum(all_errors) / len(all_errors) if all_errors else None,
        "corruption_errors": ce,
        "relative_corruption_errors": rel,
        "mce": sum(ce.values()) / len(ce) if full else None,
        "relative_mce": sum(rel.values()) / len(rel) if full and rel else None,
        "mce_partial": sum(ce.values()) / len(ce) if ce and not full else None,
        "clean_error": 100.0 * clean_error if clean_error is not None else None,
        "coverage": {
            "benchmark_complete": complete,
            "benchmark_missing": [c for c in BENCHMARK if c not in complete],
            "not_normalised": sorted(c for c in errors if c not in complete),
        },
        "alexnet": {"source": SOURCE, "clean_error": 100.0 * ALEXNET_CLEAN_ERROR},
    }
