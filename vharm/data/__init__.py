"""Training data: recolouring families, masked sources, the two-frame pair synthesis with exact flow, datasets."""
