"""Asymptote over WebSocket: the runner back end and the queue front end."""
