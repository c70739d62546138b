import sys

from mcp_services.loadgen.cli import main

sys.exit(main())
