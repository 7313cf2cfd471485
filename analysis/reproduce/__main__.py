"""``python -m analysis.reproduce``."""
import sys

from .main import main

sys.exit(main())
