"""Gradual channel pruning of the plain U-Net (the Lean U-Net study, docs/methods.md#channel-pruning)."""
