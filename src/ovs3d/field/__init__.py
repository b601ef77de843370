"""Radiance-field parameter containers (TensoRF VM grids, heads, occupancy grid)."""
