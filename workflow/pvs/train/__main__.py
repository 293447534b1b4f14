import sys

from pvs.train.trainer import main

sys.exit(main())
