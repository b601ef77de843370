"""ovs3d: open-vocabulary segmentation of 3D scenes.

Posed photos + plain-text labels in; a radiance field with CLIP/DINO/SAM knowledge distilled into it out,
so that every view and every 3D point gets a label and any text can be queried.
"""

from ovs3d.version import __version__

__all__ = ["__version__"]
