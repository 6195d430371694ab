"""One comparison engine for every task (`duet compare`): methods × settings chosen on validation ×
seeds, per-unit scores, paired and seed-level intervals (`engine`), and the comparison any task
with a base and a DUET method gets from it (`generic`). The tasks' own comparisons are
configurations of the same engine: their methods, and what their reports show."""
