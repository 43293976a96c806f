"""Safety on both sides of the model: message categories, candidate and fact filters, fixed replies."""
from .filter import MODES, Category, SafetyFilter, has_personal_data
from .replies import SafetyReplies

__all__ = ["MODES", "Category", "SafetyFilter", "SafetyReplies", "has_personal_data"]
