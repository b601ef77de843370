"""``python -m ovs3d``."""

from ovs3d.cli.main import main

main()
