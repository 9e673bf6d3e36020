import sys

from gateway.lab.sim import main

sys.exit(main())
