from memvos.cli import entry

entry()
