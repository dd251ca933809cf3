"""memvos.models."""
