"""memvos.memory."""
