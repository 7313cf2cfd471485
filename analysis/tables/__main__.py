"""``python -m analysis.tables``."""
import sys

from .comparison import main

sys.exit(main())
