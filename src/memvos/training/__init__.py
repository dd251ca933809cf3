"""memvos.training."""
