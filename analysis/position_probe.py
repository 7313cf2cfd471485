"""``python -m analysis.position_probe``: the command of the position probe (``analysis.probes.position_probe``)."""
import sys

from analysis.probes.position_probe import main

if __name__ == "__main__":
    sys.exit(main())
