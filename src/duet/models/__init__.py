"""Device model: backbones (static part) and the functional dynamic head."""
