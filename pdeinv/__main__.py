import sys

from pdeinv.cli import main

sys.exit(main())
