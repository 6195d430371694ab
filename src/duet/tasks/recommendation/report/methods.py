"""What the recommendation comparison reports: its methods and metrics (shared by the run and the rendering)."""

# duet-global: the chosen DUET run's own static part with the global head (no
# generation); duet-scratch: DUET trained jointly from scratch (the published schedule).
METHODS = ("pop", "base", "finetune", "duet-noswa", "duet", "duet-global", "duet-scratch")
# With `--device-model` (a compressed device; `base` is then the cloud model): the device model
# alone, its static part with generated heads, and that static part with the global head.
DEVICE_METHODS = ("device", "device-duet", "device-global")
ROWS = METHODS + DEVICE_METHODS
GLOBAL_HEAD = ("duet-global", "device-global")  # rows scored with their DUET run's global head
REPORTED = ("auc", "uauc", "ndcg@10", "hit@10", "logloss")
FULL_RANKED = ("full_ndcg@10", "full_recall@10", "full_mrr")
