import sys

from parcelout._cli import main

sys.exit(main())
