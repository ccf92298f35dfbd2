import sys

from erpsync.cli import main

sys.exit(main())
