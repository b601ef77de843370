"""Pure tensor functions: rays, sampling, volume rendering."""
