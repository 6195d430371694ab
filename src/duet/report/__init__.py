"""`duet compare`: pop, base, fine-tune and DUET (with and without SWA) on the same splits."""
