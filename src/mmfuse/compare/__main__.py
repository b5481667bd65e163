import sys

from mmfuse.compare import main

sys.exit(main())
