"""Recommendation backbones (static parts), the Recommender device model and popularity."""
