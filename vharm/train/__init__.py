"""Training: the paper's losses and the two-frame GAN training loop."""
