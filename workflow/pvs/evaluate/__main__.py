import sys

from pvs.evaluate.score import main

sys.exit(main())
