"""The shipped models, installed with the package (package data): the chat model, the sentence encoder
and the reply index. ``engine.config`` finds them here wherever Rapport is installed."""
