"""Training: the paper's losses (losses.py), the two-frame GAN loop (loop.py), its resume point (resume.py) and
its rank handling under torchrun (distributed.py)."""
