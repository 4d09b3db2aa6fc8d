"""Networks: G and D (networks.py) over interchangeable backbones (backbones.py)."""

from vharm.models.networks import Discriminator, Generator, count_params, from_pretrained, save_pretrained

__all__ = ["Generator", "Discriminator", "from_pretrained", "save_pretrained", "count_params"]
