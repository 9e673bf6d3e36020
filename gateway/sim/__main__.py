import sys

from gateway.sim import main

sys.exit(main())
