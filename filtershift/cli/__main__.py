import sys

from filtershift.cli import main

sys.exit(main())
