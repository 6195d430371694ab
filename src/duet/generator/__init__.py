"""PPG (personalized parameters generator) and SWA (stable weight adapter), built from a ParamSpec."""
