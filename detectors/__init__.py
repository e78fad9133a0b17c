"""Detectors: torch models that learn what a good part looks like from good images only. Needs the train extra.

Every detector is declared once, in its package, as a `detectors.registry.Detector` (name, pydantic params,
build, fit); `detectors.registry` does the lookup, the params check and the seeding for every command. The table
below is the torch-free index of names, so the CLI can list them without importing torch.
"""

DETECTORS: dict[str, str] = {
    "ssim_ae": "detectors.ssim_ae",
    "padim": "detectors.padim",
    "draem": "detectors.draem",
    "patchcore": "detectors.patchcore",
    "efficientad": "detectors.efficientad",
    "metric": "detectors.metric",
    "mahalanobis": "detectors.mahalanobis",
    "variation": "detectors.variation",
}
