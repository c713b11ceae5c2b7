"""The task: datasets, the embedded default task, and loading/saving (pruned) models."""
