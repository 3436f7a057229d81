"""Segmentation algorithms and post-processing."""
