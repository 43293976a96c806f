"""Safety on both sides of the model: message categories, candidate and fact filters, fixed replies."""
from .classifier import SafetyClassifier
from .filter import MODES, Assessment, Category, SafetyFilter, has_personal_data
from .replies import SafetyReplies

__all__ = ["MODES", "Assessment", "Category", "SafetyClassifier", "SafetyFilter", "SafetyReplies", "has_personal_data"]
