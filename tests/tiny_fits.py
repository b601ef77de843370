"""Fit flags that make a fit of the 64x48 test scenes take a second or two (shared by the CLI and batch tests)."""


def tiny_recon(n_iters: int) -> list[str]:
    """Flags of a reconstruction of ``n_iters`` iterations on a tiny grid."""
    return ["--recon.n-iters", str(n_iters), *TINY_RECON[2:]]


TINY_RECON = [
    "--recon.n-iters", "12",
    "--recon.batch-size", "64",
    "--recon.init-voxels", "4096",
    "--recon.final-voxels", "8000",
    "--recon.upsample-iters", "1",
    "--recon.occupancy-iters", "1",
]  # fmt: skip
"""A reconstruction of a second or two."""
TINY_SEMANTIC = ["--semantic.n-iters", "6", "--semantic.batch-size", "256"]
"""A semantic stage of a few iterations."""
