"""LERF (Kerr et al. 2023) with the panoptic prior of Ji et al.: a scale-conditioned language field."""
