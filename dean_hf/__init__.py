"""dean_hf: DEAN coupled-neuron editing (fairness and privacy) for Hugging Face causal LMs."""

from ._version import __version__  # noqa: E402
from .config import DeanConfig  # noqa: E402
from .editor import DeanEditor  # noqa: E402
from .errors import DeanError  # noqa: E402
from .mask import NeuronMask  # noqa: E402
from .scoring import ImportanceScores, score_importance  # noqa: E402
from .selection import select_by_expression, select_coupled_neurons  # noqa: E402

__all__ = ["DeanConfig", "DeanEditor", "DeanError", "ImportanceScores", "NeuronMask", "score_importance",
           "select_by_expression", "select_coupled_neurons", "__version__"]
