"""Importance scoring: hooks collect per-weight scores in one pass over the data."""

from .engine import data_fingerprint, score_importance
from .loss import forward_loss, loss_positions, per_sample_loss
from .scorers import Scorer, available_scorers, get_scorer, register_scorer
from .scores import ImportanceScores

__all__ = ["ImportanceScores", "Scorer", "available_scorers", "data_fingerprint", "get_scorer",
           "forward_loss", "loss_positions", "per_sample_loss", "register_scorer", "score_importance"]
