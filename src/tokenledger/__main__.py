import sys

from tokenledger.cli import main

sys.exit(main())
