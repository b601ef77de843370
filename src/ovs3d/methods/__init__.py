"""Training methods: RGB reconstruction and semantic distillation (3D-OVS, ...)."""
