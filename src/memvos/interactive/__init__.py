"""memvos.interactive."""
