"""Rapport's shared engine: model runtime, prompt building, profiles, state store."""
