import sys

from ftp_export.cli import main

sys.exit(main())
