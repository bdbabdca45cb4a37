import sys

from worker_manager.cli import main

sys.exit(main())
