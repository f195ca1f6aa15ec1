"""The HTTP site shared by the HTTP and WebSocket front ends."""
