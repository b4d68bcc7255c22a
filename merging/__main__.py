"""``python -m merging``: the command line of merging/cli.py; Ctrl-C while it loads ends as quietly as later."""
import sys

from .errors import report

try:
    from .cli import main
except KeyboardInterrupt as interrupted:
    message, status = report(interrupted)
    print(message, file=sys.stderr)
    sys.exit(status)

sys.exit(main())
