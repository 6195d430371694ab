"""One router per concern: health, models, parameters, metrics."""
