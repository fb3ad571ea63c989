"""Evaluation of AttTok models (scoring, classifiers, figures)."""
