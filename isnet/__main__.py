import sys

from isnet.cli import main

sys.exit(main())
