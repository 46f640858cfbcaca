import sys

from cka_lab.cli import main

sys.exit(main())
