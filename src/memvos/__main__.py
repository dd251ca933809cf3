import sys

from memvos.cli import main

sys.exit(main())
