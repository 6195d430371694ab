"""Statistics shared by every task's comparison: paired bootstrap intervals and stability summaries."""
