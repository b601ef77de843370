"""Evaluation: segmentation metrics (SPEC §5), PSNR, overlays and the 2D baseline."""
