"""Task-agnostic model parts: the functional dynamic heads and shared sequence layers."""
