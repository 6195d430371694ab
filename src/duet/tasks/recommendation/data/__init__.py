"""Data: preparation from raw sources, the on-disk dataset format, and batching."""

# `duet prepare --source` names this task builds (light: the command line lists them without
# importing pandas).
SOURCES = ("movielens-small", "ml-100k", "movielens-1m", "csv", "recbole", "duet-text", "synthetic-scale",
           "synthetic-shift")
