"""The recommendation comparison: pop, base, fine-tune and DUET variants on the same splits."""
