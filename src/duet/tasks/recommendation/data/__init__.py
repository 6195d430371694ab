"""Data: preparation from raw sources, the on-disk dataset format, and batching."""
