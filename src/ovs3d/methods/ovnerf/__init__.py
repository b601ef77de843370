"""OV-NeRF (Liao et al.): Region Semantic Ranking and Cross-view Self-enhancement over the 3D-OVS parts."""
