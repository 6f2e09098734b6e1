import sys

from reelora.cli import main

sys.exit(main())
