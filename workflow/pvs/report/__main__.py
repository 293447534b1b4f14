import sys

from pvs.report.build import main

sys.exit(main())
