"""Training loops (base, DUET, fine-tuning), evaluation and popularity baseline."""
