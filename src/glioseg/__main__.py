import sys

from glioseg.cli import main

sys.exit(main())
