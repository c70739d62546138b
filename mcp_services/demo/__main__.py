import sys

from mcp_services.demo.cli import main

sys.exit(main())
