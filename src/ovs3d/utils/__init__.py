"""Small shared helpers: atomic files, checkpoints, progress, seeding."""
