"""3D-OVS semantic stage: CLIP feature distillation with a selection volume, RDA and FDA losses."""
