"""memvos.inference."""
