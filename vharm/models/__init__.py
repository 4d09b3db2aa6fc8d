"""Networks: G and D (networks.py) over interchangeable backbones (backbones.py), and the colour transform
G predicts (colortransform.py)."""

from vharm.models.networks import DEFAULT_WEIGHTS, WEIGHTS_DIR, Discriminator, Generator, count_params, resolve_weights

__all__ = ["Generator", "Discriminator", "resolve_weights", "count_params", "DEFAULT_WEIGHTS", "WEIGHTS_DIR"]
