"""Recovery of pruned models before export (least-squares refits, distillation)."""
