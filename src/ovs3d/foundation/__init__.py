"""Foundation-model backends (CLIP, DINO, mask proposals): real and simulated, and their feature cache."""
