"""Pictures that explain a run (``python -m analysis.pictures KIND``): one module per picture, what they share in ``canvas``."""

from .attention import attention_picture  # noqa: F401
from .monitor_curves import final_transfer, plot_monitor_curves, plot_run_curves, pretrained_runs  # noqa: F401
from .positions import positions_picture  # noqa: F401
from .probe_curves import plot_probe_curves  # noqa: F401
from .smoothing import plot_smoothing_targets  # noqa: F401
