"""Terminal output shared by every command-line front (optimize, serve, simulate, deploy):
results on stdout, progress bars or plain progress lines on stderr. Compute modules never
import it; only CLIs do."""

from cli_output._output import ProgressBar, ProgressLines, stderr, stdout

__all__ = ["ProgressBar", "ProgressLines", "stderr", "stdout"]
