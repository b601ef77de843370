"""The ``ovs3d`` command line (thin: parses and delegates to library functions)."""
