"""memvos.models.backbones."""
