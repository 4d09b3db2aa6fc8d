import sys

from vharm.cli import main

sys.exit(main())
