import sys

from cdnlab.cli import main

sys.exit(main())
