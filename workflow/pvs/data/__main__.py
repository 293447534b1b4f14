import sys

from pvs.data.prepare import main

sys.exit(main())
