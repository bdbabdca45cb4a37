import sys

from worker_manager.cli.main import main

sys.exit(main())
