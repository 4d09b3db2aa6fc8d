"""Files in and out: atomic outputs (files), still images and masks (images), video streams (video), and the one
mask rule (masks)."""
